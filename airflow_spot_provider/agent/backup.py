"""``python -m airflow_spot_provider.agent.backup CONFIG.json`` — what a backup-save helper VM runs.

The dead attempt's data disk is attached to this helper; copy its checkpoint files that are new or
changed (the manifest decides) to the store, then record the result as the attempt's ``backup-save``
marker, which the operator's trigger waits for. Only the standard library and fsspec: this runs on a VM.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from airflow_spot_provider.attempt import Marker
from airflow_spot_provider.checkpoints.store import CheckpointStore
from airflow_spot_provider.checkpoints.sync import DirectorySync

log = logging.getLogger("airflow_spot_provider.backup")


@dataclass(frozen=True)
class BackupConfig:
    checkpoint_uri: str
    attempt: int
    checkpoint_pattern: str
    data_dir: str  # where the dead attempt's disk is mounted; its checkpoints are in data_dir/checkpoints
    wait_seconds: float = 600.0  # for the disk to be attached and mounted

    @classmethod
    def from_json(cls, text: str) -> BackupConfig:
        return cls(**json.loads(text))


def wait_for_disk(checkpoints: Path, wait_seconds: float) -> bool:
    deadline = time.monotonic() + wait_seconds
    while not checkpoints.is_dir():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def run(config: BackupConfig) -> int:
    store = CheckpointStore.from_uri(config.checkpoint_uri)
    checkpoints = Path(os.path.abspath(config.data_dir)) / "checkpoints"
    if not wait_for_disk(checkpoints, config.wait_seconds):
        # A disk without a checkpoint directory: the job never wrote one. Nothing to save, not an error.
        log.info("no checkpoint directory on the attached disk (%s)", checkpoints)
        store.write_marker(config.attempt, Marker.BACKUP_SAVE, {"uploaded": [], "bytes": 0, "latest": None,
                                                           "reason": "no checkpoint directory on the disk"})
        return 0
    try:
        syncer = DirectorySync(checkpoints, store, config.attempt, config.checkpoint_pattern)
        result = syncer.sync(Marker.BACKUP_SAVE.value)
    except Exception as err:  # noqa: BLE001 - any failure must reach the operator as a marker
        log.exception("backup-save failed")
        store.write_marker(config.attempt, Marker.BACKUP_SAVE, {"error": f"{type(err).__name__}: {err}"})
        return 1
    log.info("backup-save: %d file(s), %d bytes; latest checkpoint %s", len(result.uploaded), result.bytes,
             result.latest)
    store.write_marker(config.attempt, Marker.BACKUP_SAVE, {"uploaded": result.uploaded, "bytes": result.bytes,
                                                       "latest": result.latest})
    return 0


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s backup-save %(levelname)s %(message)s")
    if len(argv) != 1:
        print("usage: python -m airflow_spot_provider.agent.backup CONFIG.json", file=sys.stderr)
        return 2
    return run(BackupConfig.from_json(Path(argv[0]).read_text()))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
