"""The backend interface shared by ``local``, ``aws`` and ``gcp``, and the one place that classifies.

A backend is a small cloud adapter: launch an attempt (idempotent by token), describe many
attempts in one call, terminate, recover the dead attempt's disk (backup-save), list what it owns.
It never decides what an attempt's outcome means: :func:`classify` does, from facts.
"""

from __future__ import annotations

import abc
import hashlib
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from airflow_spot_provider.checkpoints.store import CheckpointStore


class AttemptStatus(str, Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # exit marker with code 0
    FAILED = "failed"  # non-zero exit and no interruption notice: the user's code failed
    PREEMPTED = "preempted"  # the cloud took the VM (state reason, or a notice marker)
    LOST = "lost"  # gone for any other reason: infrastructure failure

    @property
    def terminal(self) -> bool:
        return self is not AttemptStatus.RUNNING


class InstanceState(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    TERMINATED = "terminated"  # stopped or terminated: it runs nothing any more
    MISSING = "missing"  # the cloud has no record of it (or its host is gone)


@dataclass(frozen=True)
class JobIdentity:
    """Who an attempt belongs to. ``nonce`` is minted once per ledger, so a re-created DAG run never
    collides with the tokens of an older run that had the same ids."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    nonce: str = ""

    def token(self, attempt: int) -> str:
        """Idempotency token of one attempt (EC2 ``ClientToken``, GCE ``requestId`` source)."""
        raw = "\x1f".join([self.dag_id, self.run_id, self.task_id, str(self.map_index), self.nonce, str(attempt)])
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    def label(self) -> str:
        suffix = f"[{self.map_index}]" if self.map_index >= 0 else ""
        return f"{self.dag_id}/{self.run_id}/{self.task_id}{suffix}"

    def tags(self, attempt: int) -> dict[str, str]:
        """Tags/labels that mark every cloud resource of an attempt (for reconnect and sweep)."""
        return {
            "spot-provider": "airflow-spot-provider",
            "spot-dag-id": self.dag_id,
            "spot-run-id": self.run_id,
            "spot-task-id": self.task_id,
            "spot-map-index": str(self.map_index),
            "spot-attempt": str(attempt),
            "spot-token": self.token(attempt),
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LaunchError(Exception):
    """The cloud would not start the attempt now; nothing was created.

    ``move_on``: this placement (type × zone) has no capacity, try the next one; otherwise (throttling)
    try the same placement again after a backoff.
    """

    def __init__(self, code: str, message: str, *, move_on: bool = True) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.move_on = move_on


@dataclass(frozen=True)
class LaunchRequest:
    identity: JobIdentity
    attempt: int
    command: list[str]
    resume_args: list[str]
    env: dict[str, str]
    checkpoint_uri: str
    checkpoint_pattern: str
    sync_interval: float
    instance_type: str | None = None
    zone: str | None = None
    market: str = "spot"
    #: How many launch calls for this attempt failed before this one (each call needs its own cloud token,
    #: because a token is bound to the parameters of its first call).
    launch_try: int = 0
    image: str | None = None
    disk_gb: int = 50
    max_price_per_hour: float | None = None

    @property
    def token(self) -> str:
        """The attempt's token: in the tags of everything launched for it, found again after a crash."""
        return self.identity.token(self.attempt)

    @property
    def call_token(self) -> str:
        """The idempotency token of this launch call (EC2 ``ClientToken``, GCE ``requestId`` source)."""
        return f"{self.token}-{self.launch_try}"


@dataclass(frozen=True)
class InstanceFacts:
    """What the cloud says about one attempt's VM. Only facts: no interpretation."""

    instance_id: str
    state: InstanceState
    reason: str = ""  # cloud's own words (e.g. Server.SpotInstanceTermination)
    preempted: bool = False  # the cloud says it reclaimed the VM
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
        return cls(**{**data, "state": InstanceState(data["state"])})


@dataclass
class BackupSaveResult:
    skipped: bool = False
    reason: str = ""
    uploaded: list[str] = field(default_factory=list)
    bytes: int = 0
    latest: str | None = None
    #: Set when the copy runs on a helper VM: the operator waits for it in a trigger, then calls
    #: :meth:`SpotBackend.finish_backup_save`, whose result keeps it (the ledger's ``backup_save.helper_id``).
    helper_id: str | None = None
    #: The copy failed: the disk is kept (never released) so nothing is lost; a retry tries again.
    error: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackupSaveResult:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Classification:
    status: AttemptStatus
    reason: str
    exit_code: int | None = None


def classify(facts: InstanceFacts, markers: dict[str, dict[str, Any]]) -> Classification:
    """Decide an attempt's status from cloud facts and the agent's markers, never from silence.

    Order matters: a clean exit wins over a later reclaim; a notice or a cloud preemption reason
    means preempted; a non-zero exit without either is the user's failure; a VM that is gone with
    none of these is lost.
    """
    exit_marker = markers.get("exit")
    code = exit_marker.get("code") if exit_marker else None
    noticed = "notice" in markers
    if exit_marker and exit_marker.get("error"):
        return Classification(AttemptStatus.FAILED, f"agent error: {exit_marker['error']}", code)
    if exit_marker and code == 0:
        return Classification(AttemptStatus.SUCCEEDED, "exit code 0", 0)
    gone = facts.state in (InstanceState.TERMINATED, InstanceState.MISSING)
    if facts.preempted and (gone or exit_marker):
        return Classification(AttemptStatus.PREEMPTED, facts.reason or "preempted", code)
    if noticed and (gone or exit_marker):
        reason = f"interruption notice ({facts.reason})" if facts.reason else "interruption notice"
        return Classification(AttemptStatus.PREEMPTED, reason, code)
    if exit_marker:
        return Classification(AttemptStatus.FAILED, f"exit code {code}", code)
    if gone and "started" not in markers and "InstanceInitiatedShutdown" in facts.reason:
        # The VM powered itself off before the agent even started: its boot failed (a missing Python, a
        # failed pip install). Relaunching would fail the same way: a user failure, not a lost VM.
        return Classification(AttemptStatus.FAILED, f"the VM shut down before the agent started ({facts.reason}): "
                              "check its console output", None)
    if gone:
        return Classification(AttemptStatus.LOST, facts.reason or f"instance {facts.state.value}", None)
    return Classification(AttemptStatus.RUNNING, "", None)


class SpotBackend(abc.ABC):
    """One cloud. Instances are built from a JSON-able options dict so a trigger can rebuild them."""

    name: str = ""
    #: Seconds a watched instance may be missing from the cloud's answers before that counts as lost:
    #: cloud APIs are eventually consistent right after a launch.
    missing_grace: float = 0.0

    def __init__(self, **options: Any) -> None:
        self.options = options

    # -- worker side ---------------------------------------------------------------------------
    @abc.abstractmethod
    def launch(self, request: LaunchRequest) -> InstanceFacts:
        """Start the attempt. Calling it again with the same token returns the same instance."""

    @abc.abstractmethod
    def find(self, request: LaunchRequest) -> InstanceFacts | None:
        """The attempt's instance if one was launched with this token (reconnect after a crash)."""

    @abc.abstractmethod
    def terminate(self, instance_id: str) -> None:
        """Stop the VM for good (idempotent). Its checkpoint disk survives for backup-save."""

    @abc.abstractmethod
    def backup_save(self, instance_id: str, store: CheckpointStore, attempt: int,
                    checkpoint_pattern: str, token: str | None = None) -> BackupSaveResult:
        """Copy new and changed files from the dead attempt's disk to the store.

        Either done at once (local), or started on a helper VM (``helper_id`` set): then a
        :class:`~airflow_spot_provider.triggers.backup_save.BackupSaveTrigger` waits for it. ``token`` is
        the attempt's token from the ledger: it finds the disk even when the cloud has forgotten the VM.
        """

    def finish_backup_save(self, instance_id: str, helper_id: str, marker: dict[str, Any] | None) -> BackupSaveResult:
        """The helper VM is done (``marker``: what it wrote to the store, None if it died): remove it."""
        raise NotImplementedError(f"the {self.name} backend runs no backup-save helpers")

    @abc.abstractmethod
    def release(self, instance_id: str, token: str | None = None) -> None:
        """Delete what is left of the attempt (its disk/volume). Call after backup-save."""

    def cancel(self, instance_id: str, token: str | None = None, *, keep_disk: bool = False) -> None:
        """The kill path (a user marked the deferred task failed/success or cleared it): remove the VM and its
        data disk without waiting for the cloud to finish, so it fits in Airflow's ``on_kill`` budget (30 s).

        ``keep_disk``: only the VM goes (a backup-save helper: the disk it reads holds checkpoints not saved
        yet). Cloud backends override this; the default (terminate, then release) suits a backend whose
        terminate and release are both fast.
        """
        self.terminate(instance_id)
        if not keep_disk:
            self.release(instance_id, token=token)

    @abc.abstractmethod
    def list_instances(self) -> list[dict[str, Any]]:
        """Every attempt this backend knows of, live or not, with its tags (for status and sweep)."""

    def sweep_delete(self, item: dict[str, Any]) -> None:
        """Remove one leftover that :meth:`list_instances` reported (the ``sweep`` command)."""
        self.terminate(item["instance_id"])
        self.release(item["instance_id"])

    def validate_machine(self, machine: Any) -> None:
        """Reject machine settings this backend cannot satisfy (called at DAG parse time)."""
        return None

    def console_url(self, instance_id: str) -> str | None:
        """The cloud console page of an instance (the task's "Spot attempt" link)."""
        return None

    def console_output(self, instance_id: str, tail: int = 20) -> list[str]:
        """The last lines the attempt printed, if the cloud keeps them."""
        return []

    # -- triggerer side ------------------------------------------------------------------------
    @abc.abstractmethod
    async def describe(self, instance_ids: list[str]) -> dict[str, InstanceFacts]:
        """Facts for many instances in one call per batch (the poller shares it between triggers)."""

    async def aclose(self) -> None:
        """Close async clients opened by :meth:`describe` (the shared poller calls this when it stops)."""
        return None

    def poll_key(self) -> tuple[str, ...]:
        """Triggers with equal keys share one describe loop (same backend, account, region)."""
        return (self.name,)

    def serialize(self) -> dict[str, Any]:
        return {"name": self.name, "options": self.options}
