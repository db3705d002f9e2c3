"""BackupSaveTrigger: waits for a backup-save helper VM to copy a dead attempt's disk to the store.

The helper writes a ``backup-save`` marker for the attempt and powers off; the event carries that
marker (or none, if the helper died first) and the operator removes the helper and the disk.
"""

from __future__ import annotations

from typing import Any

from airflow_spot_provider.attempt import InstanceFacts, Marker, Markers, ended_event
from airflow_spot_provider.checkpoints.store import CheckpointStore
from airflow_spot_provider.triggers.base import SpotInstanceTrigger

#: Event statuses of a backup-save helper's end: its copy is in the store, or it is not.
SAVED, NOT_SAVED = "saved", "not-saved"


class BackupSaveTrigger(SpotInstanceTrigger):
    """``instance_id`` is the helper VM; ``attempt`` the dead attempt whose disk it copies."""

    def read_markers(self, store: CheckpointStore) -> Markers:
        return Markers({k: v for k, v in store.read_markers(self.watch.attempt).items()
                        if k == Marker.BACKUP_SAVE.value})

    def verdict(self, facts: InstanceFacts, markers: Markers) -> dict[str, Any] | None:
        marker = markers.get(Marker.BACKUP_SAVE)
        if marker is not None:
            verdict = {"status": NOT_SAVED if marker.get("error") else SAVED, "marker": marker}
        elif facts.state.gone:
            verdict = {"status": NOT_SAVED, "marker": None, "reason": f"helper {facts.state.value}: {facts.reason}"}
        else:
            return None
        return ended_event(self.watch.attempt, self.watch.instance_id, facts, markers, verdict)

    def destroy(self, backend: Any) -> None:
        # Only the helper, without waiting for it to be gone: the dead attempt's disk is kept until a
        # backup-save finishes (no data lost); the sweep removes it once the job is gone.
        self.log.info("on_kill: terminating backup-save helper %s", self.watch.instance_id)
        backend.cancel(self.watch.instance_id, keep_disk=True)
