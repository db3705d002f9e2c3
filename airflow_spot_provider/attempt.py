"""The attempt model: one run of the job on one VM, its statuses, the agent's markers, and how they decide.

An attempt moves ``launching`` → ``running`` → one terminal status. What it ends as is decided from two
kinds of facts only, never from silence (see ``docs/design.md``, "Classification from facts"):

- :class:`InstanceFacts`: what the cloud says about the VM (each backend translates its own words);
- :class:`Markers`: what the agent on the VM wrote to the checkpoint store (``started``, ``notice``…).

:class:`AttemptRecord` is what the ledger keeps of an attempt; the methods here are the only code that
changes it from facts, events and markers. This module imports nothing from Airflow: the agent uses it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any


class AttemptStatus(str, Enum):
    LAUNCHING = "launching"  # recorded before the launch call: a restarted worker finds the VM by its token
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # exit marker with code 0
    FAILED = "failed"  # non-zero exit and no interruption notice: the user's code (or its boot) failed
    PREEMPTED = "preempted"  # the cloud took the VM (its state reason, or a notice marker)
    LOST = "lost"  # gone for any other reason: infrastructure failure
    CANCELLED = "cancelled"  # the operator gave up on it (job_timeout, no capacity in time)

    @property
    def active(self) -> bool:
        return self in (AttemptStatus.LAUNCHING, AttemptStatus.RUNNING)

    @property
    def terminal(self) -> bool:
        return not self.active

    @property
    def interrupted(self) -> bool:
        """Ended by the infrastructure, not by the job: relaunched in the same try (``max_preemptions``)."""
        return self in (AttemptStatus.PREEMPTED, AttemptStatus.LOST)

    @property
    def wastes_work(self) -> bool:
        """Work done after its last published checkpoint is lost (counted in the ledger's lost work)."""
        return self.interrupted or self is AttemptStatus.FAILED


class Marker(str, Enum):
    """The files under ``.spot/attempts/<N>/`` in the store: the agent's and a backup-save helper's records, and
    the one control file written from outside (a rehearsal)."""

    STARTED = "started"  # the agent runs and restored ``restored_from``: written before the job starts
    NOTICE = "notice"  # an interruption notice arrived; the job got SIGTERM
    PROGRESS = "progress"  # the job's last progress report
    FINAL_SYNC = "final-sync"  # synced after the job exited: nothing on the disk is newer
    EXIT = "exit"  # the job's exit code (or the agent's error)
    BACKUP_SAVE = "backup-save"  # a backup-save helper's result for this attempt's disk
    REHEARSAL = "rehearsal"  # a user asked for a rehearsed preemption: the agent treats it as the cloud's notice

    @property
    def file(self) -> str:
        return f"{self.value}.json"


@dataclass(frozen=True)
class Markers:
    """One attempt's markers as read from the store (``{name: content}``), read through named properties."""

    raw: dict[str, dict[str, Any]] = field(default_factory=dict)

    def get(self, marker: Marker) -> dict[str, Any] | None:
        return self.raw.get(marker.value)

    def has(self, marker: Marker) -> bool:
        return marker.value in self.raw

    def _field(self, marker: Marker, key: str) -> Any:
        return (self.get(marker) or {}).get(key)

    @property
    def exited(self) -> bool:
        return self.has(Marker.EXIT)

    @property
    def exit_code(self) -> int | None:
        return self._field(Marker.EXIT, "code")

    @property
    def agent_error(self) -> str | None:
        """The agent itself failed (it could not start the job, or the store refused it)."""
        return self._field(Marker.EXIT, "error")

    @property
    def sync_error(self) -> str | None:
        """The agent's final sync failed: the newest checkpoints are only on the disk."""
        return self._field(Marker.EXIT, "sync_error")

    @property
    def exited_at(self) -> float | None:
        return self._field(Marker.EXIT, "time")

    @property
    def started_at(self) -> float | None:
        return self._field(Marker.STARTED, "time")

    @property
    def restored_from(self) -> str | None:
        return self._field(Marker.STARTED, "restored_from")

    @property
    def noticed_at(self) -> float | None:
        return self._field(Marker.NOTICE, "time")

    @property
    def progress(self) -> dict[str, Any] | None:
        return self.get(Marker.PROGRESS)

    @property
    def rehearsed(self) -> bool:
        """The notice was a rehearsal a user asked for, not the cloud's."""
        return (self._field(Marker.NOTICE, "notice") or {}).get("source") == Marker.REHEARSAL.value


# What the agent writes in its markers: built here, next to :class:`Markers`, which reads them.
def started_marker(instance_id: str, restored_from: str | None) -> dict[str, Any]:
    return {"instance_id": instance_id, "restored_from": restored_from}


def notice_marker(notice: dict[str, Any]) -> dict[str, Any]:
    return {"notice": notice}


def rehearsal_marker(grace_seconds: float, requested_by: str | None) -> dict[str, Any]:
    return {"grace": grace_seconds, "by": requested_by}


def rehearsal_notice(rehearsal: dict[str, Any]) -> dict[str, Any]:
    """The notice the agent acts on for a rehearsal (the job cannot tell it from the cloud's)."""
    return {"action": "terminate", "source": Marker.REHEARSAL.value, "grace": float(rehearsal.get("grace") or 0),
            "by": rehearsal.get("by")}


def exit_marker(code: int | None, *, noticed: bool, final_sync: bool = False, fenced: int | None = None,
                sync_error: str | None = None, error: str | None = None) -> dict[str, Any]:
    """``code`` None: the job did not run to an exit code (``error`` says why)."""
    data: dict[str, Any] = {"code": code, "notice": noticed, "final_sync": final_sync}
    optional = {"fenced": fenced, "sync_error": sync_error, "error": error}
    return {**data, **{k: v for k, v in optional.items() if v is not None}}


class InstanceState(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    TERMINATED = "terminated"  # stopped or terminated: it runs nothing any more
    MISSING = "missing"  # the cloud has no record of it (or its host is gone)

    @property
    def gone(self) -> bool:
        return self in (InstanceState.TERMINATED, InstanceState.MISSING)


@dataclass(frozen=True)
class InstanceFacts:
    """What the cloud says about one attempt's VM, in its own words; each backend fills in the meaning of those
    words for the two flags (``preempted``, ``guest_shutdown``). No interpretation beyond that."""

    instance_id: str
    state: InstanceState
    reason: str = ""  # the cloud's own words (e.g. Server.SpotInstanceTermination)
    preempted: bool = False  # the cloud says it reclaimed the VM
    #: The VM powered itself off (its OS shut down): on EC2 ``Client.InstanceInitiatedShutdown``; on GCE a stop
    #: with no preemption or host-error operation.
    guest_shutdown: bool = False
    zone: str | None = None
    instance_type: str | None = None
    market: str = "spot"
    launched_at: float | None = None
    ended_at: float | None = None
    price_per_hour: float | None = None
    on_demand_price_per_hour: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstanceFacts:
        known = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in data.items() if k in known}, "state": InstanceState(data["state"])})


@dataclass(frozen=True)
class Classification:
    status: AttemptStatus
    reason: str
    exit_code: int | None = None


def classify(facts: InstanceFacts, markers: Markers) -> Classification:
    """Decide an attempt's status from cloud facts and the agent's markers, never from silence.

    Order matters: a clean exit wins over a later reclaim; a notice or a cloud preemption means preempted; a
    non-zero exit without either is the user's failure; a VM that is gone with none of these is lost.
    """
    code = markers.exit_code
    if markers.agent_error:
        return Classification(AttemptStatus.FAILED, f"agent error: {markers.agent_error}", code)
    if markers.exited and code == 0:
        # After a notice, exit 0 may also be a script that stopped early and said nothing (Lightning's default on
        # SIGTERM): the reason says so, since only the script can tell.
        after = " after an interruption notice (a script that stops early must exit non-zero, e.g. 143)"
        return Classification(AttemptStatus.SUCCEEDED, "exit code 0" + (after if markers.has(Marker.NOTICE) else ""), 0)
    over = facts.state.gone or markers.exited
    if facts.preempted and over:
        return Classification(AttemptStatus.PREEMPTED, facts.reason or "preempted", code)
    if markers.has(Marker.NOTICE) and over:
        what = "rehearsed preemption" if markers.rehearsed else "interruption notice"
        reason = f"{what} ({facts.reason})" if facts.reason else what
        return Classification(AttemptStatus.PREEMPTED, reason, code)
    if markers.exited:
        return Classification(AttemptStatus.FAILED, f"exit code {code}", code)
    if facts.state.gone and facts.guest_shutdown and not markers.has(Marker.STARTED):
        # The VM powered itself off before the agent even started: its boot failed (a missing Python, a
        # failed pip install). Relaunching would fail the same way: a user failure, not a lost VM.
        return Classification(AttemptStatus.FAILED, f"the VM shut down before the agent started ({facts.reason}): "
                              "check its console output", None)
    if facts.state.gone:
        return Classification(AttemptStatus.LOST, facts.reason or f"instance {facts.state.value}", None)
    return Classification(AttemptStatus.RUNNING, "", None)


# -- the trigger's event ---------------------------------------------------------------------------
#: Event status of a watch that could not describe its instance for ``describe_failure_timeout`` seconds.
DESCRIBE_ERROR = "error"


def ended_event(attempt: int, instance_id: str, facts: InstanceFacts, markers: Markers,
                verdict: dict[str, Any]) -> dict[str, Any]:
    """The payload of a trigger event that says the watched VM's work is over (``verdict``: what it decided)."""
    return {**verdict, "attempt": attempt, "instance_id": instance_id, "facts": facts.to_dict(),
            "markers": markers.raw, "observed_at": time.time()}


def classified_event(attempt: int, instance_id: str, facts: InstanceFacts, markers: Markers) -> dict[str, Any] | None:
    """The attempt's end as a trigger event, or None while it runs."""
    result = classify(facts, markers)
    if not result.status.terminal:
        return None
    return ended_event(attempt, instance_id, facts, markers, {
        "status": result.status.value, "reason": result.reason, "exit_code": result.exit_code})


# -- the ledger's record of an attempt -------------------------------------------------------------
@dataclass
class AttemptRecord:
    attempt: int
    try_number: int
    backend: str
    token: str
    status: AttemptStatus = AttemptStatus.LAUNCHING
    reason: str = ""
    exit_code: int | None = None
    instance_id: str | None = None
    zone: str | None = None
    instance_type: str | None = None
    market: str = "spot"
    launched_at: float | None = None
    started_at: float | None = None
    notice_at: float | None = None
    ended_at: float | None = None
    restored_from: str | None = None
    last_checkpoint: str | None = None
    #: When the newest file this attempt published was last modified (work after it is lost on preemption).
    last_checkpoint_at: float | None = None
    price_per_hour: float | None = None
    on_demand_price_per_hour: float | None = None
    progress: dict[str, Any] | None = None
    backup_save: dict[str, Any] | None = None
    #: The agent synced after the job exited (final-sync marker): nothing on the disk is newer.
    final_synced: bool = False
    #: The agent's last storage error when its final sync failed (backup-save then saves the disk).
    sync_error: str | None = None
    #: Backup-saves that failed (the disk was kept each time and the next try saved it again).
    backup_save_errors: list[str] = field(default_factory=list)
    #: Backup-save helper VM while it runs (a restarted worker waits for it again).
    backup_helper: str | None = None
    #: The attempt's disk/volume is deleted: nothing of it is left in the cloud.
    released: bool = False
    #: Index into the machine's placements (type × zone) of the current/next launch call.
    placement: int = 0
    #: Launch calls the cloud refused (capacity, throttling), oldest first.
    launch_errors: list[dict[str, Any]] = field(default_factory=list)
    #: Timer deferrals while waiting for capacity (the backoff grows with it).
    capacity_waits: int = 0
    #: Bumped on every save: the copy with the higher revision (state store or mirror) is the newer one.
    revision: int = 0

    def __post_init__(self) -> None:
        self.status = AttemptStatus(self.status)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttemptRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value}

    @property
    def active(self) -> bool:
        return self.status.active

    @property
    def seconds(self) -> float:
        if self.launched_at is None:
            return 0.0
        return max(0.0, (self.ended_at or time.time()) - self.launched_at)

    @property
    def cost(self) -> float:
        return (self.price_per_hour or 0.0) * self.seconds / 3600

    @property
    def lost_seconds(self) -> float:
        """Work this attempt did that no checkpoint kept (all of it when it saved nothing)."""
        if not self.status.wastes_work or self.launched_at is None:
            return 0.0
        kept_until = self.last_checkpoint_at or self.launched_at
        return max(0.0, min(self.seconds, (self.ended_at or time.time()) - max(kept_until, self.launched_at)))

    # -- what changes it ---------------------------------------------------------------------------
    def observe(self, facts: InstanceFacts) -> None:
        """What the cloud said about the attempt's VM (at launch, reconnect or end); unknowns keep the old value."""
        self.instance_id = facts.instance_id
        self.zone = facts.zone or self.zone
        self.instance_type = facts.instance_type or self.instance_type
        self.market = facts.market or self.market
        self.launched_at = facts.launched_at or self.launched_at
        if facts.price_per_hour is not None:
            self.price_per_hour = facts.price_per_hour
        if facts.on_demand_price_per_hour is not None:
            self.on_demand_price_per_hour = facts.on_demand_price_per_hour
        self.ended_at = facts.ended_at or self.ended_at

    def running_on(self, facts: InstanceFacts) -> None:
        self.observe(facts)
        self.status = AttemptStatus.RUNNING

    def refused(self, code: str, message: str, instance_type: str | None, zone: str | None) -> None:
        """The cloud refused one launch call (capacity, quota, throttling)."""
        self.launch_errors.append({"code": code, "message": message, "instance_type": instance_type, "zone": zone,
                                   "market": self.market, "time": time.time()})

    def ended(self, event: dict[str, Any]) -> None:
        """The trigger's event (:func:`classified_event`): the attempt is over, as classified there."""
        markers = Markers(event.get("markers") or {})
        self.observe(InstanceFacts.from_dict(event["facts"]))
        self.status = AttemptStatus(event["status"])
        self.reason = event.get("reason") or ""
        self.exit_code = event.get("exit_code")
        self.final_synced = markers.has(Marker.FINAL_SYNC)
        self.sync_error = markers.sync_error
        self.started_at = markers.started_at or self.started_at
        self.restored_from = markers.restored_from or self.restored_from
        self.notice_at = markers.noticed_at or self.notice_at
        self.progress = markers.progress or self.progress
        self.ended_at = self.ended_at or markers.exited_at or event.get("observed_at")

    def cancel(self, reason: str) -> None:
        self.status, self.reason = AttemptStatus.CANCELLED, reason
        self.ended_at = self.ended_at or time.time()
