"""The backend interface shared by ``local``, ``aws`` and ``gcp``.

A backend is a small cloud adapter: launch an attempt (idempotent by token), describe many
attempts in one call, terminate, recover the dead attempt's disk (backup-save), list what it owns.
It translates its cloud's words into :class:`~airflow_spot_provider.attempt.InstanceFacts` and never
decides what an attempt's outcome means: :func:`airflow_spot_provider.attempt.classify` does.
"""

from __future__ import annotations

import abc
import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

from airflow_spot_provider.agent.config import AgentConfig
from airflow_spot_provider.attempt import InstanceFacts, InstanceState

T = TypeVar("T")

#: What a resource is to the provider (the ``spot-role`` tag/label on the clouds).
ROLE_ATTEMPT = "attempt"
ROLE_HELPER = "backup-save"
ROLE_DISK = "disk"  # a data disk whose VM is no longer on record


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

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> JobIdentity | None:
        """The job a resource's tags name (without the nonce, which is not a tag); None when they name none."""
        try:
            return cls(tags["spot-dag-id"], tags["spot-run-id"], tags["spot-task-id"],
                       int(tags.get("spot-map-index", -1)))
        except (KeyError, ValueError):
            return None

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

    def agent_config(self, *, instance_id: str, work_dir: str, notice: dict[str, Any],
                     env: dict[str, str] | None = None) -> AgentConfig:
        """What the attempt's agent runs: the one translation of a launch request for the agent."""
        return AgentConfig(
            attempt=self.attempt, instance_id=instance_id, command=list(self.command),
            resume_args=list(self.resume_args), env=dict(self.env if env is None else env),
            checkpoint_uri=self.checkpoint_uri, work_dir=work_dir, checkpoint_pattern=self.checkpoint_pattern,
            sync_interval=self.sync_interval, notice=notice,
        )


@dataclass(frozen=True)
class CloudResource:
    """Something a backend owns, as :meth:`SpotBackend.list_instances` reports it: a VM (an attempt or a
    backup-save helper) with its data disk if one is left, or a data disk alone (``facts`` None)."""

    tags: dict[str, str]
    role: str = ROLE_ATTEMPT
    facts: InstanceFacts | None = None
    #: The attempt's data disk while it exists (EC2 volume id, GCE ``zone/name``, the local instance id).
    disk_id: str | None = None

    @property
    def instance_id(self) -> str | None:
        return self.facts.instance_id if self.facts else None

    @property
    def state(self) -> InstanceState:
        return self.facts.state if self.facts else InstanceState.MISSING

    @property
    def running(self) -> bool:
        return self.state in (InstanceState.PENDING, InstanceState.RUNNING)

    @property
    def has_disk(self) -> bool:
        return self.disk_id is not None

    @property
    def attempt(self) -> int:
        try:
            return int(self.tags.get("spot-attempt", 0))
        except ValueError:
            return 0

    @property
    def job(self) -> JobIdentity | None:
        return JobIdentity.from_tags(self.tags)

    def describe(self) -> str:
        if self.facts is None:
            return f"data disk {self.disk_id}"
        if self.running:
            return f"{self.state.value} {self.role} {self.instance_id}"
        return f"disk of {self.role} {self.instance_id} ({self.state.value})"

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "attempt": self.attempt, "tags": self.tags, "disk_id": self.disk_id,
                **(self.facts.to_dict() if self.facts else {"instance_id": None, "state": self.state.value})}


@dataclass(frozen=True)
class BackupSaveRequest:
    """Copy what a dead attempt's disk holds beyond the store (:meth:`SpotBackend.backup_save`)."""

    instance_id: str
    attempt: int
    checkpoint_uri: str
    checkpoint_pattern: str
    #: The attempt's token from the ledger: finds the disk even after the cloud has forgotten the VM.
    token: str | None = None


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SpotBackend(abc.ABC):
    """One cloud. Instances are built from a JSON-able options dict so a trigger can rebuild them."""

    name: str = ""
    #: Seconds a watched instance may be missing from the cloud's answers before that counts as lost:
    #: cloud APIs are eventually consistent right after a launch.
    missing_grace: float = 0.0

    def __init__(self, *, conn_id: str | None = None, **options: Any) -> None:
        self.options = options
        #: The Airflow connection of the cloud API and of the checkpoint store (None: the defaults).
        self.conn_id = conn_id

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
    def backup_save(self, request: BackupSaveRequest) -> BackupSaveResult:
        """Copy new and changed files from the dead attempt's disk to the store.

        Either done at once (local), or started on a helper VM (``helper_id`` set): then a
        :class:`~airflow_spot_provider.triggers.backup_save.BackupSaveTrigger` waits for it.
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
    def list_instances(self) -> list[CloudResource]:
        """Everything this backend owns, live or not, with its tags (for status and sweep)."""

    def sweep_delete(self, resource: CloudResource) -> None:
        """Remove one leftover that :meth:`list_instances` reported (the ``sweep`` command)."""
        if resource.instance_id is None:
            if resource.disk_id is not None:
                self.delete_disk(resource.disk_id)
            return
        self.terminate(resource.instance_id)
        self.release(resource.instance_id, token=resource.tags.get("spot-token"))

    def delete_disk(self, disk_id: str) -> None:
        """Delete a data disk whose VM is no longer on record."""
        raise NotImplementedError(f"the {self.name} backend keeps no disks without their VM")

    def validate_machine(self, machine: Any) -> None:
        """Reject machine settings this backend cannot satisfy (called at DAG parse time)."""
        return None

    def console_url(self, instance_id: str) -> str | None:
        """The cloud console page of an instance (the task's "Spot attempt" link)."""
        return None

    def storage_console_url(self, checkpoint_uri: str) -> str | None:
        """The cloud console page of a checkpoint prefix (the task's "Checkpoints" link)."""
        return None

    def wait_timeout(self) -> float:
        """Seconds a blocking call (terminate, delete) waits for the cloud (``backend_options.wait_timeout``)."""
        return float(self.options.get("wait_timeout", 300))

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


def poll_until(check: Callable[[], tuple[bool, T]], *, timeout: float, interval: float,
               timed_out: Callable[[T], str]) -> T:
    """Call ``check`` until it says done (``(True, value)``), every ``interval`` seconds; after ``timeout``
    seconds raise :class:`TimeoutError` with ``timed_out(last value)``. The one wait loop of the backends."""
    deadline = time.monotonic() + timeout
    while True:
        done, value = check()
        if done:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(timed_out(value))
        time.sleep(interval)


def prefix_parts(uri: str) -> tuple[str, str]:
    """``scheme://bucket/some/prefix`` -> (bucket, ``some/prefix/``), for console URLs."""
    bucket, _, prefix = uri.partition("://")[2].partition("/")
    return quote(bucket), quote(prefix.rstrip("/") + "/" if prefix.strip("/") else "")
