"""Rehearse a preemption on any backend: the running attempt gets an interruption notice through the store.

The agent looks for a ``rehearsal`` marker every few seconds and then does exactly what it does on the cloud's
notice (SIGTERM and the notice file for the job, a sync right away); when the job has not exited after the grace
it ends it, as the cloud would end the VM. The VM then powers off, and the attempt ends as preempted
("rehearsed preemption"): backup-save, relaunch from the checkpoint, all in the same try. Nothing here needs the
cloud's API or its credentials: only the checkpoint store, with the task's connection.

Asked for by ``airflow-spot rehearse DAG_ID/RUN_ID/TASK_ID`` and by the button on the UI's "Spot attempts" tab.
"""

from __future__ import annotations

from dataclasses import dataclass

from airflow_spot_provider.attempt import AttemptRecord, AttemptStatus, Marker, rehearsal_marker
from airflow_spot_provider.ledger import JobRecord

#: The grace of a rehearsal unless one is given: between GCE's 30 s and EC2's 2 minutes.
DEFAULT_GRACE = 30.0
MAX_GRACE = 600.0


class RehearsalRefused(ValueError):
    """The job has no running attempt to rehearse on (or the grace makes no sense)."""


@dataclass(frozen=True)
class Rehearsal:
    attempt: int
    instance_id: str | None
    grace: float


def rehearse(job: JobRecord, current: AttemptRecord | None, grace: float = DEFAULT_GRACE,
             requested_by: str | None = None) -> Rehearsal:
    """Post the rehearsal for ``current``, the job's running attempt (from its ledger)."""
    if not 0 <= grace <= MAX_GRACE:
        raise RehearsalRefused(f"grace: must be between 0 and {MAX_GRACE:g} seconds, got {grace:g}")
    if current is None or current.status is not AttemptStatus.RUNNING:
        raise RehearsalRefused("the job has no running attempt" + (f" (attempt {current.attempt} is "
                               f"{current.status.value})" if current else ""))
    if not job.checkpoint_uri:
        raise RehearsalRefused("the ledger does not say where the job's checkpoints are (written by an older "
                               "version of the provider): relaunch the task first")
    from airflow_spot_provider.checkpoints.objectstorage import store_for

    store = store_for(job.checkpoint_uri, job.conn_id)
    store.write_marker(current.attempt, Marker.REHEARSAL, rehearsal_marker(grace, requested_by))
    return Rehearsal(current.attempt, current.instance_id, grace)
