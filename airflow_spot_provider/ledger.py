"""The job ledger: every attempt, why it ended and what it cost, kept in Airflow's ``task_state_store``.

Keys (visible in the task instance's Storage tab and the REST API)::

    spot.job            # nonce (part of every idempotency token) and the attempt count
    spot.attempt.0001   # one record per attempt
    spot.summary        # derived on every save (current attempt, totals): one row per job for the UI's job list

Every value is written with ``retention=NEVER_EXPIRE`` (the default expires after 30 days). The ledger
survives worker crashes and retries: it is how a new try reconnects instead of launching again.

The state store can be edited from Airflow's UI ("Clear All", per-key delete and edit) and is cleared on
success when ``[state_store] clear_on_success`` is on. So every record is also written, first, to a mirror in
the checkpoint store (:class:`LedgerMirror`), with a revision number; a key that is missing from the state
store, or older than the mirror, is restored from the mirror when it is read. The mirror is the record; the
state store is where Airflow's UI and REST API show it.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from airflow_spot_provider.attempt import AttemptRecord, AttemptStatus

if TYPE_CHECKING:
    from airflow_spot_provider.checkpoints.store import CheckpointStore

log = logging.getLogger(__name__)

KEY_PREFIX = "spot."
JOB_KEY = f"{KEY_PREFIX}job"
ATTEMPT_KEY = KEY_PREFIX + "attempt.{:04d}"
#: Derived from the others and written to the state store only (not mirrored): rewritten by the next save.
SUMMARY_KEY = f"{KEY_PREFIX}summary"


class StateStore(Protocol):
    def get(self, key: str, default: Any = None) -> Any: ...
    def set(self, key: str, value: Any, *, retention: timedelta | None = None) -> None: ...


class LedgerMirror:
    """The ledger's copy in the checkpoint store: ``.spot/ledger/<task instance>/<key>.json``.

    One directory per task instance (dag, run, task, map index), because runs may share a prefix.
    """

    def __init__(self, store: CheckpointStore, dag_id: str, run_id: str, task_id: str, map_index: int) -> None:
        from airflow_spot_provider.checkpoints.store import LEDGER_DIR

        self.store = store
        scope = "\x1f".join([dag_id, run_id, task_id, str(map_index)])
        self.dir = f"{LEDGER_DIR}/{hashlib.sha256(scope.encode()).hexdigest()[:24]}"

    def get(self, key: str) -> dict[str, Any] | None:
        return self.store.read_json(f"{self.dir}/{key}.json")

    def set(self, key: str, value: dict[str, Any]) -> None:
        self.store.write_json(f"{self.dir}/{key}.json", value)


def _never_expire() -> timedelta | None:
    try:
        from airflow.sdk import NEVER_EXPIRE

        return NEVER_EXPIRE
    except ImportError:  # pragma: no cover - only outside Airflow (unit tests of plain dict stores)
        return None


@dataclass
class JobRecord:
    nonce: str = field(default_factory=lambda: secrets.token_hex(8))
    attempts: int = 0
    #: Epoch second by which each try (by try number) must finish (``job_timeout``).
    deadlines: dict[str, float] = field(default_factory=dict)
    #: The attempt numbers of this job, in order. Numbers are unique per checkpoint prefix, so a job that
    #: continues from an older run's prefix starts after that run's numbers (``attempts`` is the last one).
    numbers: list[int] = field(default_factory=list)
    #: The succeeded attempt whose result was returned to Airflow. A later try trains again only after that
    #: (a user cleared the task); an automatic retry after a crash returns the recorded result instead.
    returned_attempt: int | None = None
    #: Where the job's checkpoints (and the agent's markers) are, and the connection that reads them: the UI reads
    #: a running attempt's progress from there.
    checkpoint_uri: str | None = None
    conn_id: str | None = None
    revision: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class Ledger:
    def __init__(self, store: StateStore, mirror: LedgerMirror | None = None) -> None:
        self.store = store
        self.mirror = mirror
        raw = self._read(JOB_KEY)
        self.job = JobRecord.from_dict(raw) if raw else JobRecord()
        self._attempts: dict[int, AttemptRecord] = {}
        if not raw:
            self._save_job()

    def _read(self, key: str) -> dict[str, Any] | None:
        """A record, from whichever copy is newer; a state store copy that is missing or stale is rewritten."""
        kept = self.store.get(key)
        kept = kept if isinstance(kept, dict) else None
        if self.mirror is None:
            return kept
        mirrored = self.mirror.get(key)
        if mirrored is None:
            if kept is not None:  # written before the mirror existed, or its write was cut short: copy it
                self.mirror.set(key, kept)
            return kept
        if kept != mirrored and (kept is None or kept.get("revision", 0) <= mirrored.get("revision", 0)):
            log.warning("Ledger key %s was %s in the task state store; restored it from the checkpoint store's "
                        "copy (revision %s)", key, "missing" if kept is None else "changed", mirrored.get("revision"))
            self.store.set(key, mirrored, retention=_never_expire())
            return mirrored
        return kept

    def _write(self, key: str, value: dict[str, Any]) -> None:
        if self.mirror is not None:  # first: the mirror is the record the state store is restored from
            self.mirror.set(key, value)
        self.store.set(key, value, retention=_never_expire())

    def deadline(self, try_number: int, timeout_seconds: float | None) -> float | None:
        """The try's deadline, fixed when the try first asks (a restarted worker keeps the same one)."""
        if timeout_seconds is None:
            return None
        key = str(try_number)
        if key not in self.job.deadlines:
            self.job.deadlines[key] = time.time() + timeout_seconds
            self._save_job()
        return self.job.deadlines[key]

    def _save_job(self) -> None:
        self.job.revision += 1
        self._write(JOB_KEY, asdict(self.job))

    def attempt(self, number: int) -> AttemptRecord | None:
        if number not in self._attempts:
            raw = self._read(ATTEMPT_KEY.format(number))
            if raw is None:
                return None
            self._attempts[number] = AttemptRecord.from_dict(raw)
        return self._attempts[number]

    def attempts(self) -> list[AttemptRecord]:
        numbers = self.job.numbers or range(1, self.job.attempts + 1)
        return [a for n in numbers if (a := self.attempt(n)) is not None]

    @property
    def current(self) -> AttemptRecord | None:
        return self.attempt(self.job.attempts) if self.job.attempts else None

    def new_attempt(self, try_number: int, backend: str, token_for: Any, after: int = 0) -> AttemptRecord:
        """Record the next attempt *before* it is launched (``docs/design.md``, "State lives in the ledger"). Its
        number follows
        this job's last one and ``after`` (the last number its checkpoint prefix has seen)."""
        number = max(self.job.attempts, after) + 1
        record = AttemptRecord(attempt=number, try_number=try_number, backend=backend, token=token_for(number))
        self.save(record)
        self.job.numbers = [*(self.job.numbers or range(1, self.job.attempts + 1)), number]
        self.job.attempts = number
        self._save_job()
        return record

    def locate(self, checkpoint_uri: str, conn_id: str | None) -> None:
        """Record where the job's checkpoints are (once, or when a rendered URI changed)."""
        if (self.job.checkpoint_uri, self.job.conn_id) != (checkpoint_uri, conn_id):
            self.job.checkpoint_uri, self.job.conn_id = checkpoint_uri, conn_id
            self._save_job()

    def save(self, record: AttemptRecord) -> None:
        self._attempts[record.attempt] = record
        record.revision += 1
        self._write(ATTEMPT_KEY.format(record.attempt), record.to_dict())
        self.store.set(SUMMARY_KEY, job_summary(self.current, self.attempts()), retention=_never_expire())

    def returning(self, record: AttemptRecord) -> None:
        """This succeeded attempt's result is being returned to Airflow."""
        self.job.returned_attempt = record.attempt
        self._save_job()

    @property
    def unreturned_success(self) -> AttemptRecord | None:
        """The current attempt, when it succeeded and was released but its result never reached Airflow."""
        current = self.current
        if current is not None and current.status is AttemptStatus.SUCCEEDED and current.released \
                and self.job.returned_attempt != current.attempt:
            return current
        return None

    def preemptions_in_try(self, try_number: int) -> int:
        return sum(1 for a in self.attempts() if a.try_number == try_number and a.status.interrupted)

    def totals(self) -> dict[str, Any]:
        return totals(self.attempts())

    def summary(self) -> dict[str, Any]:
        return {"totals": self.totals(), "attempts": [a.to_dict() for a in self.attempts()]}


def totals(attempts: list[AttemptRecord]) -> dict[str, Any]:
    """Counts, cost and savings of a job's attempts (the XCom summary's ``totals``)."""
    cost = sum(a.cost for a in attempts)
    seconds = sum(a.seconds for a in attempts)
    lost = sum(a.lost_seconds for a in attempts)
    # What the work that survived would have cost on-demand: honest savings count preemption waste.
    on_demand = sum((a.on_demand_price_per_hour or 0.0) * max(0.0, a.seconds - a.lost_seconds) / 3600
                    for a in attempts)
    return {
        "attempts": len(attempts),
        "preemptions": sum(1 for a in attempts if a.status is AttemptStatus.PREEMPTED),
        "lost": sum(1 for a in attempts if a.status is AttemptStatus.LOST),
        "user_failures": sum(1 for a in attempts if a.status is AttemptStatus.FAILED),
        "instance_seconds": round(seconds, 3),
        "lost_work_seconds": round(lost, 3),
        "cost": round(cost, 6),
        "on_demand_equivalent_cost": round(on_demand, 6),
        "savings_pct": round(100 * (1 - cost / on_demand), 1) if on_demand > 0 else None,
    }


def job_summary(current: AttemptRecord | None, attempts: list[AttemptRecord]) -> dict[str, Any]:
    """The ``spot.summary`` row: the current attempt and the totals, what a list of jobs shows."""
    return {
        "backend": current.backend if current else None,
        "attempt": current.attempt if current else None,
        "status": current.status.value if current else None,
        "progress": current.progress if current else None,
        "updated": time.time(),
        **totals(attempts),
    }


def format_attempt(a: AttemptRecord) -> str:
    """One log line per attempt transition."""
    where = f"{a.instance_id or '-'} ({a.instance_type or '?'}, {a.zone or '?'}, {a.market})"
    parts = [f"attempt {a.attempt} [try {a.try_number}] {a.status.value.upper()}", where]
    if a.reason:
        parts.append(f"reason: {a.reason}")
    if a.restored_from:
        parts.append(f"resumed from {a.restored_from}")
    if a.last_checkpoint:
        parts.append(f"last checkpoint {a.last_checkpoint}")
    if a.progress:
        shown = {k: v for k, v in a.progress.items() if k in ("step", "epoch") and v is not None}
        parts.append("progress " + ", ".join(f"{k} {v}" for k, v in shown.items()))
    if a.ended_at:
        parts.append(f"{a.seconds:.1f}s, ${a.cost:.6f} at ${a.price_per_hour or 0:.4f}/h")
    return " | ".join(parts)


def format_totals(totals: dict[str, Any]) -> str:
    savings = f"{totals['savings_pct']}%" if totals["savings_pct"] is not None else "n/a"
    return (
        f"{totals['attempts']} attempt(s): {totals['preemptions']} preempted, {totals['lost']} lost, "
        f"{totals['user_failures']} failed | cost ${totals['cost']:.6f} vs on-demand "
        f"${totals['on_demand_equivalent_cost']:.6f} for the work kept | savings {savings} | "
        f"lost work {totals['lost_work_seconds']:.1f}s"
    )
