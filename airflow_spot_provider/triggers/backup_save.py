"""BackupSaveTrigger: waits for a backup-save helper VM to copy a dead attempt's disk to the store.

The helper writes a ``backup-save`` marker for the attempt and powers off; the event carries that
marker (or none, if the helper died first) and the operator removes the helper and the disk.
"""

from __future__ import annotations

from typing import Any

from airflow_spot_provider.backends.base import InstanceFacts, InstanceState
from airflow_spot_provider.checkpoints.store import CheckpointStore
from airflow_spot_provider.triggers.base import SpotInstanceTrigger

BACKUP_MARKER = "backup-save"


class BackupSaveTrigger(SpotInstanceTrigger):
    """``instance_id`` is the helper VM; ``attempt`` the dead attempt whose disk it copies."""

    def read_markers(self, store: CheckpointStore) -> dict[str, Any]:
        return {k: v for k, v in store.read_markers(self.attempt).items() if k == BACKUP_MARKER}

    def verdict(self, facts: InstanceFacts, markers: dict[str, Any]) -> dict[str, Any] | None:
        marker = markers.get(BACKUP_MARKER)
        if marker is not None:
            return {"status": "done" if not marker.get("error") else "failed", "marker": marker}
        if facts.state in (InstanceState.TERMINATED, InstanceState.MISSING):
            return {"status": "failed", "marker": None, "reason": f"helper {facts.state.value}: {facts.reason}"}
        return None

    def destroy(self, backend: Any) -> None:
        # Only the helper, without waiting for it to be gone: the dead attempt's disk is kept until a
        # backup-save finishes (no data lost); the sweep removes it once the job is gone.
        self.log.info("on_kill: terminating backup-save helper %s", self.instance_id)
        backend.cancel(self.instance_id, keep_disk=True)
