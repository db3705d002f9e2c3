"""Reading the ledgers of many task instances from the metadata database, in SQL (filtered and paged there).

The rows are Airflow's ``task_state_store`` table (values are JSON text), the same rows the ledger writes
through the Task SDK. Nothing here writes.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from airflow_spot_provider.attempt import AttemptRecord, AttemptStatus
from airflow_spot_provider.ledger import ATTEMPT_KEY, JOB_KEY, KEY_PREFIX, SUMMARY_KEY, JobRecord, totals


@dataclass(frozen=True)
class TaskKey:
    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1


@dataclass
class TaskLedger:
    """One task instance's ledger as the state store holds it."""

    key: TaskKey
    job: JobRecord
    attempts: list[AttemptRecord]

    @property
    def current(self) -> AttemptRecord | None:
        return self.attempts[-1] if self.attempts else None

    def to_dict(self) -> dict[str, Any]:
        current = self.current
        return {
            "dag_id": self.key.dag_id, "run_id": self.key.run_id, "task_id": self.key.task_id,
            "map_index": self.key.map_index, "live": bool(current and current.active),
            "attempts": [{**a.to_dict(), "seconds": round(a.seconds, 3), "cost": round(a.cost, 6),
                          "lost_seconds": round(a.lost_seconds, 3)} for a in self.attempts],
            "totals": totals(self.attempts),
        }


def _model() -> Any:
    from airflow.models.task_state_store import TaskStateStoreModel

    return TaskStateStoreModel


def read_task_ledger(session: Any, key: TaskKey) -> TaskLedger | None:
    """The ledger of one task instance (None: it has none)."""
    from sqlalchemy import select

    model = _model()
    rows = session.execute(select(model.key, model.value).where(
        model.dag_id == key.dag_id, model.run_id == key.run_id, model.task_id == key.task_id,
        model.map_index == key.map_index, model.key.startswith(KEY_PREFIX, autoescape=True))).all()
    values = {row.key: json.loads(row.value) for row in rows}
    if JOB_KEY not in values:
        return None
    job = JobRecord.from_dict(values[JOB_KEY])
    numbers = job.numbers or range(1, job.attempts + 1)
    attempts = [AttemptRecord.from_dict(values[ATTEMPT_KEY.format(n)]) for n in numbers
                if ATTEMPT_KEY.format(n) in values]
    return TaskLedger(key, job, attempts)


@dataclass(frozen=True)
class JobRow:
    key: TaskKey
    summary: dict[str, Any]
    updated_at: Any

    @property
    def running(self) -> bool:
        status = self.summary.get("status")
        return status is not None and AttemptStatus(status).active

    def to_dict(self) -> dict[str, Any]:
        return {"dag_id": self.key.dag_id, "run_id": self.key.run_id, "task_id": self.key.task_id,
                "map_index": self.key.map_index, **{k: v for k, v in self.summary.items() if k != "updated"},
                "updated_at": self.updated_at.isoformat()}


@dataclass(frozen=True)
class JobsPage:
    total: int
    rows: list[JobRow]


#: Seconds the clocks of the hosts that write the ledger and of the database may differ.
CLOCK_SKEW_SECONDS = 3600
#: The statuses of an attempt that still runs (a job whose current attempt has one is running).
ACTIVE = tuple(status.value for status in AttemptStatus if status.active)


class JobState(str, Enum):
    """A job as the list of jobs filters it: its current attempt is active, or it is not."""

    RUNNING = "running"
    FINISHED = "finished"


def _json_text(session: Any, column: Any, name: str) -> Any:
    """SQL for the JSON text ``column``'s top-level field ``name``, as text: filtering and ordering in the database,
    not after reading every row. SQLite's CAST to JSON would make a number of it: it has json_extract instead."""
    from sqlalchemy import JSON, cast, func

    if session.get_bind().dialect.name == "sqlite":
        return func.json_extract(column, f"$.{name}")
    return cast(column, JSON)[name].as_string()


def read_jobs(session: Any, dag_ids: set[str], since: Any = None, state: JobState | None = None, limit: int = 50,
              offset: int = 0) -> JobsPage:
    """One page of the spot jobs (one ``spot.summary`` row each) in ``dag_ids``: running first, then newest first.

    ``state``: running or finished. Filtered, counted, ordered and paged in SQL: the summaries of the other
    jobs are never read. The running jobs on the page get their totals recomputed (the summary has them as of
    its last save, usually the attempt's launch).
    """
    from sqlalchemy import case, func, select

    model = _model()
    running = func.coalesce(_json_text(session, model.value, "status"), "").in_(ACTIVE)
    where = [model.key == SUMMARY_KEY, model.dag_id.in_(dag_ids)]
    if since is not None:
        where.append(model.updated_at >= since)
    if state is not None:
        where.append(running if state is JobState.RUNNING else ~running)
    total = session.scalar(select(func.count()).select_from(model).where(*where))
    query = (select(model.dag_id, model.run_id, model.task_id, model.map_index, model.value, model.updated_at)
             .where(*where).order_by(case((running, 0), else_=1), model.updated_at.desc(), model.id.desc())
             .limit(limit).offset(offset))
    rows = [JobRow(TaskKey(r.dag_id, r.run_id, r.task_id, r.map_index), json.loads(r.value), r.updated_at)
            for r in session.execute(query).all()]
    return JobsPage(total, _with_live_totals(session, rows))


def _with_live_totals(session: Any, rows: list[JobRow]) -> list[JobRow]:
    live = [row.key for row in rows if row.running]
    if not live:
        return rows
    attempts = _attempts_of(session, live)
    return [JobRow(row.key, {**row.summary, **totals(attempts[row.key])}, row.updated_at)
            if row.key in attempts else row for row in rows]


def _attempts_of(session: Any, keys: list[TaskKey]) -> dict[TaskKey, list[AttemptRecord]]:
    """The attempt records of a few task instances, in one query (by the state store's lookup index)."""
    from sqlalchemy import select

    model = _model()
    wanted = set(keys)
    rows = session.execute(select(model.dag_id, model.run_id, model.task_id, model.map_index, model.value).where(
        model.dag_id.in_({k.dag_id for k in keys}), model.run_id.in_({k.run_id for k in keys}),
        model.key.startswith(f"{KEY_PREFIX}attempt.", autoescape=True))).all()
    found: dict[TaskKey, list[AttemptRecord]] = defaultdict(list)
    for r in rows:
        key = TaskKey(r.dag_id, r.run_id, r.task_id, r.map_index)
        if key in wanted:
            found[key].append(AttemptRecord.from_dict(json.loads(r.value)))
    return dict(found)


def placement_stats(session: Any, dag_ids: set[str], since_epoch: float) -> dict[str, Any]:
    """Preemptions per (backend, instance type, zone), their rate per attempt-hour, spend and savings since then."""
    from sqlalchemy import func, or_, select

    model = _model()
    # An attempt's record is rewritten when it ends: one last written before the window (less a margin for clock
    # skew between the hosts) ended before it, unless it still runs. (MySQL's JSON null comes back as "null".)
    running = func.coalesce(_json_text(session, model.value, "ended_at"), "null") == "null"
    written_since = datetime.fromtimestamp(since_epoch - CLOCK_SKEW_SECONDS, tz=timezone.utc)
    rows = session.execute(select(model.value).where(
        model.key.startswith(f"{KEY_PREFIX}attempt.", autoescape=True), model.dag_id.in_(dag_ids),
        or_(model.updated_at >= written_since, running))).all()
    attempts = [a for a in (AttemptRecord.from_dict(json.loads(r.value)) for r in rows)
                if a.launched_at is not None and (a.ended_at or time.time()) >= since_epoch]
    groups: dict[tuple[str, str | None, str | None], list[AttemptRecord]] = defaultdict(list)
    for a in attempts:
        groups[(a.backend, a.instance_type, a.zone)].append(a)
    placements = []
    for (backend, instance_type, zone), group in sorted(groups.items(), key=lambda kv: [str(k) for k in kv[0]]):
        hours = sum(a.seconds for a in group) / 3600
        preempted = [a for a in group if a.status is AttemptStatus.PREEMPTED]
        placements.append({
            "backend": backend, "instance_type": instance_type, "zone": zone, "attempts": len(group),
            "preemptions": len(preempted), "attempt_hours": round(hours, 4),
            "preemptions_per_attempt_hour": round(len(preempted) / hours, 3) if hours > 0 else None,
            "mean_seconds_to_preemption": round(sum(a.seconds for a in preempted) / len(preempted), 1)
            if preempted else None,
        })
    overall = totals(attempts)
    return {"placements": placements, "cost": overall["cost"],
            "on_demand_equivalent_cost": overall["on_demand_equivalent_cost"], "savings_pct": overall["savings_pct"]}
