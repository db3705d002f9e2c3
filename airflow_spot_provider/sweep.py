"""Find (and remove) what this provider left in a cloud whose Airflow job no longer runs.

A VM, volume/disk or backup-save helper is a leftover when the task instance it belongs to (by its
tags/labels) is not live in Airflow: finished, failed, removed, or its Airflow is down (no scheduler or
triggerer heartbeat, or the operator says so with ``--assume-down``). A live job's resources are never
touched: its operator may be between an attempt's end and the backup-save of its disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from airflow_spot_provider.backends.base import CloudResource, JobIdentity, SpotBackend

#: Task-instance states in which the operator may still act on its resources.
LIVE_STATES = frozenset({
    "deferred", "running", "queued", "scheduled", "up_for_retry", "up_for_reschedule", "restarting",
})
LIVE_RUN_STATES = frozenset({"running", "queued"})
#: The Airflow jobs whose heartbeat says "Airflow is up": they are the ones that act on a job's resources.
HEARTBEAT_JOB_TYPES = ("SchedulerJob", "TriggererJob")
#: ``--assume-down`` still refuses while a scheduler or triggerer heartbeated within this many of its own
#: heartbeat intervals: that Airflow is plainly up, and deleting its jobs' VMs would break running tasks.
ASSUME_DOWN_REFUSE_HEARTBEATS = 2


#: Answers "is this job live in Airflow?" with a reason when it is not.
Liveness = Callable[[JobIdentity], tuple[bool, str]]


@dataclass
class Leftover:
    resource: CloudResource
    job: str
    why: str

    def describe(self) -> str:
        return f"{self.resource.describe()} of {self.job} attempt {self.resource.attempt}: {self.why}"


def find_leftovers(backend: SpotBackend, is_live: Liveness | None) -> list[Leftover]:
    """``is_live`` None: Airflow is not asked (``--no-airflow``): only finished attempts' disks are leftovers."""
    found = []
    for resource in backend.list_instances():
        if not resource.running and not resource.has_disk:
            continue  # nothing of it is left
        job = resource.job
        label = job.label() if job else "an unknown job"
        if is_live is None:
            if not resource.running:
                found.append(Leftover(resource, label, "finished, disk not released"))
            continue
        if job is None:
            found.append(Leftover(resource, label, "carries no job identity"))
            continue
        live, why = is_live(job)
        if not live:
            found.append(Leftover(resource, label, why))
    return found


def airflow_db_liveness(heartbeat_seconds: float | None = None) -> Liveness:
    """Ask the Airflow metadata database (the CLI's view; a task uses :func:`task_sdk_liveness`)."""
    from airflow.configuration import conf
    from airflow.jobs.job import Job
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.sdk import timezone
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    threshold = heartbeat_seconds or conf.getfloat("scheduler", "scheduler_health_check_threshold", fallback=30.0)
    with create_session() as session:
        since = timezone.utcnow() - timedelta(seconds=threshold)
        alive = session.scalar(select(func.count()).select_from(Job).where(
            Job.job_type.in_(HEARTBEAT_JOB_TYPES), Job.state == "running", Job.latest_heartbeat > since))

    def is_live(key: JobIdentity) -> tuple[bool, str]:
        if not alive:
            return False, f"Airflow is not running (no scheduler/triggerer heartbeat in {threshold:g}s)"
        with create_session() as session:
            ti_state = session.scalar(select(TaskInstance.state).where(
                TaskInstance.dag_id == key.dag_id, TaskInstance.run_id == key.run_id,
                TaskInstance.task_id == key.task_id, TaskInstance.map_index == key.map_index))
            run_state = session.scalar(select(DagRun.state).where(
                DagRun.dag_id == key.dag_id, DagRun.run_id == key.run_id))
        if run_state is None:
            return False, "its DAG run no longer exists"
        state = str(ti_state.value if hasattr(ti_state, "value") else ti_state) if ti_state is not None else None
        if state in LIVE_STATES or (state is None and str(run_state) in LIVE_RUN_STATES):
            return True, ""
        return False, f"its task is {state or 'not scheduled'}"

    return is_live


class AirflowLooksUp(RuntimeError):
    """``--assume-down`` was given, but a scheduler or triggerer heartbeated moments ago."""


def assumed_down_liveness() -> Liveness:
    """Every job counts as not live (``--assume-down``: the operator knows Airflow is down).

    Task states and the health threshold are not consulted. The one check left is a guard against a
    mistake: a scheduler or triggerer whose last heartbeat is less than
    :data:`ASSUME_DOWN_REFUSE_HEARTBEATS` of its heartbeat intervals old raises :class:`AirflowLooksUp`.
    """
    from airflow.jobs.job import Job
    from airflow.sdk import timezone
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        now = timezone.utcnow()
        ages = [(job, (now - job.latest_heartbeat).total_seconds()) for job in session.scalars(select(Job).where(
            Job.job_type.in_(HEARTBEAT_JOB_TYPES), Job.state == "running", Job.latest_heartbeat.is_not(None)))]
        for job, age in ages:
            if age < ASSUME_DOWN_REFUSE_HEARTBEATS * job.heartrate:
                raise AirflowLooksUp(
                    f"{job.job_type} {job.id} on {job.hostname} heartbeated {max(age, 0.0):.1f}s ago (its heartbeat "
                    f"interval is {job.heartrate:g}s): Airflow looks up")
    newest = min((age for _, age in ages), default=None)
    why = "Airflow is assumed down (--assume-down)" + (
        f"; its last scheduler/triggerer heartbeat was {newest:.0f}s ago" if newest is not None else "")
    return lambda key: (False, why)


def sweep(backend: SpotBackend, is_live: Liveness | None, delete: bool, say: Callable[[str], None]) -> int:
    """Print (and with ``delete`` remove) the leftovers; returns how many were found."""
    leftovers = find_leftovers(backend, is_live)
    for leftover in leftovers:
        say(f"{'deleting' if delete else 'would delete'} {leftover.describe()}")
        if delete:
            started = time.monotonic()
            backend.sweep_delete(leftover.resource)
            say(f"  done in {time.monotonic() - started:.1f}s")
    return len(leftovers)
