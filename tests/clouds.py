"""What differs per cloud in the tests, in one place: one small dataclass per cloud (local, AWS, GCP).

A test parametrized over clouds gets a :class:`Cloud` and never asks which one it is: how to build the
backend, a launch request and a job's operator arguments; the fake that plays the cloud and the codes it
fails with; the checkpoint store; what the backend is expected to report (prices, reasons); and the
cloud's own view of a job's resources, read through the cloud's API (boto3, compute_v1, the local state
directory), never through the backend under test. :func:`open_cloud` starts one, for the tests in this
process and, through :attr:`Cloud.airflow_env`, for the processes of a real Airflow cluster
(:func:`airflow_on`).
"""

from __future__ import annotations

import abc
import contextlib
import itertools
import os
import re
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from airflow_spot_provider.attempt import InstanceState
from airflow_spot_provider.backends.base import ROLE_ATTEMPT, ROLE_HELPER, JobIdentity, LaunchRequest, SpotBackend
from airflow_spot_provider.checkpoints.store import CheckpointStore

from .cluster import AirflowCluster, attempt_processes, running
from .waiting import wait_for

BUCKET = "ckpt"
#: Each fake gets a connection of its own: Airflow caches a connection's filesystem, and a new fake listens elsewhere.
_CONNECTIONS = itertools.count(1)
STEP_PATTERN = r"(?P<step>\d+)"
Tags = dict[str, str]


def task(task_id: str) -> Tags:
    """The tags of everything launched for a task (the backend tests' jobs)."""
    return {"spot-task-id": task_id}


def job(dag_id: str, run_id: str) -> Tags:
    """The tags of everything launched for a DAG run (the cluster tests' jobs)."""
    return {"spot-dag-id": dag_id, "spot-run-id": run_id}


@dataclass(kw_only=True)
class Cloud(abc.ABC):
    """What a scenario needs to know about a cloud. Each subclass holds its cloud's data as field defaults;
    :func:`open_cloud` fills in what exists only once the fake runs (the fake, an image id, endpoints)."""

    name: ClassVar[str]
    #: What :meth:`status` says of a VM that runs.
    running_statuses: ClassVar[tuple[str, ...]] = ("running",)
    root: Path
    fake: Any  # the control layer: preempt, lose, wait_gone, data_dir, tracked... (tests/fake_cloud.py)
    conn_id: str | None = None
    image: str | None = None
    types: tuple[str, ...]
    zones: tuple[str, ...]
    #: A secret only the Airflow side holds: no VM, log, XCom or ledger entry may show it.
    secret: str
    #: How the backend prices an attempt of ``types[0]``.
    spot_price: float
    on_demand_price: float
    #: A first preemption with a notice of this many seconds, then one without: the reasons the two attempts get
    #: (regular expressions), and whether the agent's notice marker is certain to be on record.
    notice_seconds: float
    preemption_reasons: tuple[str, str]
    notice_recorded: bool = True
    #: Whether a backup-save runs on a helper VM (the clouds) or reads the disk directly (local).
    backup_helper: bool = True
    #: A lost VM: the state and reason ``describe`` gives.
    lost_state: InstanceState = InstanceState.TERMINATED
    lost_reason: str
    #: An instance id of this cloud that names nothing.
    unknown_id: str
    #: Files in the fake's VM directory holding what the VM was given at boot.
    boot_files: tuple[str, ...]
    #: Matches any instance id of this cloud in a text.
    any_instance_id: re.Pattern[str]
    #: The real Airflow cluster's DAGs on this cloud are ``<dag_prefix><scenario>`` (tests/cluster_dags).
    dag_prefix: str
    #: Variables every Airflow process of a cluster on this cloud needs.
    airflow_env: dict[str, str] = field(default_factory=dict)

    # -- requests -----------------------------------------------------------------------------------------
    @abc.abstractmethod
    def options(self, **extra: Any) -> dict[str, Any]:
        """The backend's options (``backend_options``)."""

    @abc.abstractmethod
    def uri(self, path: str) -> str:
        """A checkpoint URI in this cloud's store."""

    @abc.abstractmethod
    def store(self, uri: str) -> CheckpointStore:
        """The store at ``uri``, opened from the test process."""

    def backend(self, **extra: Any) -> SpotBackend:
        from airflow_spot_provider.backends import get_backend

        return get_backend(self.name, self.options(**extra), self.conn_id)

    def request(self, prefix: str, command: list[str], **kw: Any) -> LaunchRequest:
        """A launch request of task ``prefix`` (its tags' task id and its checkpoint prefix)."""
        return LaunchRequest(
            identity=kw.pop("identity", None) or JobIdentity("dag", "run", prefix, -1, "nonce"),
            attempt=kw.pop("attempt", 1), command=command, resume_args=[], env={},
            checkpoint_uri=self.uri(f"{prefix}/"), checkpoint_pattern=STEP_PATTERN,
            sync_interval=kw.pop("sync_interval", 0.5), instance_type=kw.pop("instance_type", self.types[0]),
            zone=kw.pop("zone", self.zones[0]), image=self.image, **kw)

    def job(self, task_id: str, **kw: Any) -> dict[str, Any]:
        """SpotTrainingOperator arguments of a job on this cloud (for tests/e2e.py's run_job)."""
        machine = {"instance_types": list(self.types[:1]), "zones": list(self.zones),
                   **({"image": self.image} if self.image else {})}
        return {"backend": self.name, "conn_id": self.conn_id, "checkpoint_uri": self.uri(f"{task_id}/"),
                "machine": machine, "backend_options": self.options(), **kw}

    # -- the cloud's own view -------------------------------------------------------------------------------
    @abc.abstractmethod
    def vms(self, tags: Tags) -> list[str]:
        """Ids of the VMs carrying these tags that the cloud still has (EC2 forgets terminated ones)."""

    @abc.abstractmethod
    def disks(self, tags: Tags) -> list[str]:
        """Ids of the data disks carrying these tags, as :meth:`data_disk` names them."""

    def leftovers(self, tags: Tags) -> list[str]:
        """Everything carrying these tags the cloud still has: nothing, once a job is over."""
        return [f"vm {i}" for i in self.vms(tags)] + [f"disk {d}" for d in self.disks(tags)]

    @abc.abstractmethod
    def created(self) -> set[str]:
        """Every instance the cloud ever created (attempts and helpers of every job)."""

    @abc.abstractmethod
    def running_attempts(self, tags: Tags) -> list[tuple[str, int]]:
        """(instance id, attempt number) of the running attempt VMs carrying these tags."""

    @abc.abstractmethod
    def status(self, instance_id: str) -> str | None:
        """The cloud's own word for the VM's state (None: no record of it)."""

    @abc.abstractmethod
    def data_disk(self, instance_id: str) -> str:
        """The data disk attached to the VM."""

    @abc.abstractmethod
    def cleanup(self, tags: Tags) -> None:
        """Remove whatever a failed test left, so the next tests start clean."""

    def vm_running(self, instance_id: str) -> bool:
        """The cloud says running and processes of the VM still run."""
        return self.status(instance_id) in self.running_statuses and bool(
            set(self.fake.tracked(instance_id)) & set(self.fake.processes_alive()))

    def lose(self, instance_id: str) -> None:
        """An infrastructure loss, with the facts the backend reads it from."""
        self.fake.lose(instance_id)

    def attempt_url(self, instance_id: str) -> str:
        """The task's "Spot attempt" link (empty: the cloud has no console, no link is shown)."""
        return ""

    def checkpoint_url(self, path: str) -> str:
        """The task's "Checkpoints" link to ``path`` in the bucket's console."""
        return ""

    def sweep_args(self) -> list[str]:
        return ["sweep"]

    def check_closed(self) -> None:
        assert not self.fake.processes_alive()


# -- local ----------------------------------------------------------------------------------------------------
class LocalMarket:
    """The local backend's spot market driven the way tests drive the cloud fakes: the verbs of
    tests/fake_cloud.py the local backend has (it has no launch failures and no held termination)."""

    def __init__(self, state_dir: Path) -> None:
        from airflow_spot_provider.backends.local import LocalBackend

        self.backend = LocalBackend(state_dir=str(state_dir))
        self.state_dir = state_dir

    def preempt(self, instance_id: str, notice_seconds: float | None = 2.0) -> None:
        self.backend.preempt(instance_id, notice=notice_seconds is not None, grace=notice_seconds)

    def lose(self, instance_id: str) -> None:
        """The host dies with its VM: no notice, no reclaim on record."""
        from airflow_spot_provider.backends.local_market import read_json

        state = read_json(self.vm_dir(instance_id) / "state.json") or {}
        for kill, target in ((os.kill, state.get("host_pid")), (os.killpg, state.get("agent_pgid"))):
            with contextlib.suppress(ProcessLookupError, TypeError):
                kill(target, signal.SIGKILL)

    def wait_gone(self, instance_id: str, timeout: float = 60.0) -> str:
        def gone() -> str | None:
            state = self.backend._facts(instance_id).state
            return state.value if state.gone and not self.tracked(instance_id) else None

        return wait_for(gone, timeout, what=f"{instance_id} to be gone")

    def vm_dir(self, instance_id: str) -> Path:
        return self.backend.instances / instance_id

    def data_dir(self, instance_id: str) -> Path:
        return self.vm_dir(instance_id) / "disk"

    def console(self, instance_id: str) -> str:
        return "\n".join(self.backend.console_output(instance_id, tail=100_000))

    def tracked(self, instance_id: str) -> set[int]:
        return set(attempt_processes(self.state_dir).get(instance_id, []))

    def processes_alive(self) -> list[int]:
        return sorted(pid for pids in attempt_processes(self.state_dir).values() for pid in pids)


@dataclass(kw_only=True)
class LocalCloud(Cloud):
    name: ClassVar[str] = "local"
    types: tuple[str, ...] = ("local.standard",)
    zones: tuple[str, ...] = ("local-1a", "local-1b")
    #: The worker's own secrets (here: a variable of the test process) never reach a local VM.
    secret: str = "worker-secret-3c9e1f7a-marker"
    spot_price: float = 0.12
    on_demand_price: float = 0.384
    notice_seconds: float = 60.0
    preemption_reasons: tuple[str, str] = (r"^Local\.SpotInterruption$",) * 2
    backup_helper: bool = False
    lost_state: InstanceState = InstanceState.MISSING  # the host that keeps the VM's record died with it
    lost_reason: str = r"^Local\.HostLost$"
    unknown_id: str = "i-local-0000000000000000"
    boot_files: tuple[str, ...] = ("agent.json", "instance.json")
    any_instance_id: re.Pattern[str] = re.compile(r"\bi-local-[0-9a-f]+")
    dag_prefix: str = "spot_cluster_"

    def options(self, **extra: Any) -> dict[str, Any]:
        return {"state_dir": str(self.fake.state_dir), **extra}

    def uri(self, path: str) -> str:
        return f"file://{self.root}/store/{path}"

    def store(self, uri: str) -> CheckpointStore:
        return CheckpointStore.from_uri(uri)

    def _items(self, tags: Tags) -> list[Any]:
        return [i for i in self.fake.backend.list_instances() if tags.items() <= i.tags.items()]

    def vms(self, tags: Tags) -> list[str]:
        return [i.instance_id for i in self._items(tags) if i.running or self.fake.tracked(i.instance_id)]

    def disks(self, tags: Tags) -> list[str]:
        return [i.disk_id for i in self._items(tags) if i.has_disk]

    def created(self) -> set[str]:
        return {i.instance_id for i in self._items({})}

    def running_attempts(self, tags: Tags) -> list[tuple[str, int]]:
        return [(i.instance_id, i.attempt) for i in self._items(tags) if i.state is InstanceState.RUNNING]

    def status(self, instance_id: str) -> str | None:
        state = self.fake.backend._facts(instance_id).state
        return None if state is InstanceState.MISSING else state.value

    def data_disk(self, instance_id: str) -> str:
        return instance_id  # the disk is the instance's own directory

    def cleanup(self, tags: Tags) -> None:
        for item in self._items(tags):
            self.fake.backend.terminate(item.instance_id)
            self.fake.backend.release(item.instance_id)


# -- the clouds with an API: launch failures, helper VMs, boot scripts, terminations that take time ----------------
@dataclass(kw_only=True)
class ApiCloud(Cloud):
    #: No capacity for a type in a zone; a type's quota used up (another type may still launch); throttled.
    capacity_code: str
    quota_code: str
    throttle_code: str
    #: Whether a throttled launch reaches the operator (which calls again later), or the backend retries it.
    throttle_reaches_the_caller: bool
    #: The API method that launches (the fake counts calls by it).
    launch_action: str
    #: Why a VM that powered off before its agent started failed (a regular expression).
    failed_boot_reason: str
    #: Credentials a boot script must never hold (the VM has its own identity).
    credential_word: str
    #: What :meth:`status` says while a held termination runs.
    terminating_status: str

    @abc.abstractmethod
    def disk_auto_deleted(self, instance_id: str) -> bool:
        """Whether the VM's data disk goes with the VM."""

    @abc.abstractmethod
    def disk_in_use(self, disk_id: str) -> bool:
        """Whether a VM has the disk attached."""

    @abc.abstractmethod
    def assert_helper(self, helper_id: str, instance_id: str) -> None:
        """The helper is the cloud's kind of backup-save VM for this attempt, with its data disk attached."""

    def vanish(self, instance_id: str) -> None:
        """The VM is gone for good, its data disk left behind."""
        self.fake.lose(instance_id)
        self.fake.wait_gone(instance_id)

    def launch_calls(self) -> int:
        return self.fake.calls[self.launch_action]


@dataclass(kw_only=True)
class AwsCloud(ApiCloud):
    name: ClassVar[str] = "aws"
    region: str = "us-east-1"
    conn_id: str = "spot_aws"
    types: tuple[str, ...] = ("m5.large", "c5.xlarge")
    zones: tuple[str, ...] = ("us-east-1a", "us-east-1b")
    secret: str = "conn-secret-7f3a9c1e-marker"
    spot_price: float = 0.00001  # moto's price history: one constant row
    on_demand_price: float = 0.096
    # A 2-minute-style notice (here 60 s): the job saves, the agent syncs and powers the VM off long before the
    # deadline, so the notice decides; without one, EC2's state reason decides.
    notice_seconds: float = 60.0
    preemption_reasons: tuple[str, str] = (r"^interruption notice", r"Server\.SpotInstanceTermination")
    lost_reason: str = r"Server\.InternalError"
    unknown_id: str = "i-0123456789abcdef0"
    boot_files: tuple[str, ...] = ("user-data",)
    any_instance_id: re.Pattern[str] = re.compile(r"\bi-[0-9a-f]{8,17}\b")
    dag_prefix: str = "spot_cluster_aws_"
    capacity_code: str = "InsufficientInstanceCapacity"
    quota_code: str = "VcpuLimitExceeded"
    throttle_code: str = "RequestLimitExceeded"
    throttle_reaches_the_caller: bool = False  # the backend retries RunInstances with the same ClientToken
    launch_action: str = "RunInstances"
    failed_boot_reason: str = r"Client\.InstanceInitiatedShutdown"
    credential_word: str = "instance-role"  # the VM's credentials come from its instance profile
    terminating_status: str = "shutting-down"

    def options(self, **extra: Any) -> dict[str, Any]:
        # The "image" is this Python environment: the agent is installed already (agent_install=[]).
        return {"region_name": self.region, "python": sys.executable, "agent_install": [], "wait_timeout": 60,
                **extra}

    def uri(self, path: str) -> str:
        return f"s3://{BUCKET}/{path}"

    def store(self, uri: str) -> CheckpointStore:
        return CheckpointStore.from_uri(uri, endpoint_url=self.fake.endpoint, key="x", secret="x")

    @property
    def ec2(self) -> Any:
        return self.fake.client("ec2")

    @staticmethod
    def _filters(tags: Tags) -> list[dict[str, Any]]:
        return [{"Name": f"tag:{key}", "Values": [value]} for key, value in tags.items()]

    def instances(self, tags: Tags) -> list[dict[str, Any]]:
        """Every instance carrying these tags, terminated ones included."""
        pages = self.ec2.get_paginator("describe_instances").paginate(Filters=self._filters(tags))
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def _instance(self, instance_id: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            found = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        except ClientError:
            return None
        return next((i for r in found for i in r["Instances"]), None)

    @staticmethod
    def tag(resource: dict[str, Any], key: str) -> str | None:
        return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}.get(key)

    def vms(self, tags: Tags) -> list[str]:
        return [i["InstanceId"] for i in self.instances(tags) if i["State"]["Name"] != "terminated"]

    def disks(self, tags: Tags) -> list[str]:
        return [v["VolumeId"] for v in self.ec2.describe_volumes(Filters=self._filters(tags))["Volumes"]]

    def created(self) -> set[str]:
        return {i["InstanceId"] for i in self.instances({})}

    def running_attempts(self, tags: Tags) -> list[tuple[str, int]]:
        return [(i["InstanceId"], int(self.tag(i, "spot-attempt"))) for i in self.instances(tags)
                if i["State"]["Name"] == "running" and self.tag(i, "spot-role") == ROLE_ATTEMPT]

    def status(self, instance_id: str) -> str | None:
        found = self._instance(instance_id)
        return found["State"]["Name"] if found else None

    def _data(self, instance_id: str) -> dict[str, Any]:
        from airflow_spot_provider.backends.aws import DATA_DEVICE

        mappings = self._instance(instance_id)["BlockDeviceMappings"]
        return next(m for m in mappings if m["DeviceName"] == DATA_DEVICE)["Ebs"]

    def data_disk(self, instance_id: str) -> str:
        return self._data(instance_id)["VolumeId"]

    def disk_auto_deleted(self, instance_id: str) -> bool:
        return self._data(instance_id)["DeleteOnTermination"]

    def disk_in_use(self, disk_id: str) -> bool:
        return self.ec2.describe_volumes(VolumeIds=[disk_id])["Volumes"][0]["State"] != "available"

    def assert_helper(self, helper_id: str, instance_id: str) -> None:
        """A small on-demand instance with the attempt's token, and its volume attached."""
        token = self.tag(self._instance(instance_id), "spot-token")
        helper = self._instance(helper_id)
        assert self.tag(helper, "spot-role") == ROLE_HELPER and "InstanceLifecycle" not in helper
        assert self.tag(helper, "spot-token") == token
        assert self.disks({"spot-token": token}) == [self.data_disk(helper_id)]

    def attempt_url(self, instance_id: str) -> str:
        return f"https://console.aws.amazon.com/ec2/home?region={self.region}#InstanceDetails:instanceId={instance_id}"

    def checkpoint_url(self, path: str) -> str:
        return f"https://s3.console.aws.amazon.com/s3/buckets/{BUCKET}?prefix={path}"

    def sweep_args(self) -> list[str]:
        return ["sweep", "--backend", "aws", "--conn-id", self.conn_id, "--option", f"region_name={self.region}"]

    def cleanup(self, tags: Tags) -> None:
        from botocore.exceptions import ClientError

        if alive := self.vms(tags):
            self.ec2.terminate_instances(InstanceIds=alive)
        for volume in self.disks(tags):
            with contextlib.suppress(ClientError):  # still attached somewhere: the fake's close ends it anyway
                self.ec2.delete_volume(VolumeId=volume)

    def check_closed(self) -> None:
        assert not self.fake.runner_errors, self.fake.runner_errors
        super().check_closed()


@dataclass(kw_only=True)
class GcpCloud(ApiCloud):
    name: ClassVar[str] = "gcp"
    running_statuses: ClassVar[tuple[str, ...]] = ("RUNNING",)
    project: str = "spot-project"
    conn_id: str = "spot_gcp"
    image: str = "projects/debian-cloud/global/images/family/debian-12"
    types: tuple[str, ...] = ("n1-standard-4", "g2-standard-8")
    zones: tuple[str, ...] = ("us-central1-a", "us-central1-b")
    secret: str = "conn-secret-5d1e8b2a-marker"
    spot_price: float = 0.04
    on_demand_price: float = 0.19
    # GCE's notice is 30 s (here 5 s). The cloud's own record decides both: a compute.instances.preempted zone
    # operation (the soft-off SIGTERM reaches the job and the agent at once: the agent's marker is not certain).
    notice_seconds: float = 5.0
    preemption_reasons: tuple[str, str] = (r"compute\.instances\.preempted",) * 2
    notice_recorded: bool = False
    lost_reason: str = r"^compute\.instances\.hostError$"
    unknown_id: str = "us-central1-a/spot-0000000000000000-1-0"
    boot_files: tuple[str, ...] = ("startup-script",)
    any_instance_id: re.Pattern[str] = re.compile(r"\bspot-[0-9a-f]{16}-\d+-\d+")
    dag_prefix: str = "spot_cluster_gcp_"
    capacity_code: str = "ZONE_RESOURCE_POOL_EXHAUSTED"
    quota_code: str = "QUOTA_EXCEEDED"
    throttle_code: str = "rateLimitExceeded"
    throttle_reaches_the_caller: bool = True
    launch_action: str = "instances.insert"
    failed_boot_reason: str = "before the agent started"
    credential_word: str = "private_key"  # the VM uses its own service account, never the connection's key
    terminating_status: str = "STOPPING"

    def options(self, **extra: Any) -> dict[str, Any]:
        return {"project_id": self.project, "api_endpoint": self.fake.endpoint, "python": sys.executable,
                "agent_install": [], "wait_timeout": 60, **extra}

    def uri(self, path: str) -> str:
        return f"gs://{BUCKET}/{path}"

    def store(self, uri: str) -> CheckpointStore:
        from airflow_spot_provider.checkpoints.objectstorage import store_for

        return store_for(uri, self.conn_id)  # the Airflow side: the connection's key, the emulator's endpoint

    def clients(self) -> tuple[Any, Any, Any]:
        """compute_v1's instances, disks and global operations clients, on the fake."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import compute_v1

        kwargs = {"credentials": AnonymousCredentials(), "transport": "rest",
                  "client_options": self.fake.client_options()}
        return (compute_v1.InstancesClient(**kwargs), compute_v1.DisksClient(**kwargs),
                compute_v1.GlobalOperationsClient(**kwargs))

    def _listing(self, tags: Tags) -> dict[str, Any]:
        from airflow_spot_provider.backends.gcp import label_value

        # Ids are no valid label values: the backend labels them with label_value's readable hash.
        text = " AND ".join(f'labels.{key} = "{label_value(value)}"' for key, value in tags.items())
        return {"project": self.project, "filter": text}

    def _instances(self, tags: Tags) -> list[tuple[str, Any]]:
        pages = self.clients()[0].aggregated_list(request=self._listing(tags))
        return [(f"{scope.rsplit('/', 1)[-1]}/{inst.name}", inst) for scope, scoped in pages
                for inst in scoped.instances]

    def instance(self, instance_id: str) -> Any:
        from google.api_core import exceptions

        zone, name = instance_id.split("/")
        try:
            return self.clients()[0].get(project=self.project, zone=zone, instance=name)
        except exceptions.NotFound:
            return None

    def _disks(self, tags: Tags) -> list[tuple[str, str]]:
        """(zone/name, role) of every disk carrying these tags, boot disks included."""
        pages = self.clients()[1].aggregated_list(request=self._listing(tags))
        return [(f"{scope.rsplit('/', 1)[-1]}/{d.name}", d.labels.get("spot-role", "")) for scope, scoped in pages
                for d in scoped.disks]

    def vms(self, tags: Tags) -> list[str]:
        return [instance_id for instance_id, _ in self._instances(tags)]

    def disks(self, tags: Tags) -> list[str]:
        return [disk for disk, role in self._disks(tags) if role != "boot"]

    def leftovers(self, tags: Tags) -> list[str]:
        return [f"vm {i}" for i in self.vms(tags)] + [f"disk {d}" for d, _ in self._disks(tags)]

    def created(self) -> set[str]:
        # GCE forgets deleted VMs: its record of insert operations remembers them.
        pages = self.clients()[2].aggregated_list(request={"project": self.project})
        return {"/".join(op.target_link.split("/zones/", 1)[1].split("/instances/")) for _, scoped in pages
                for op in scoped.operations if op.operation_type == "insert" and "/instances/" in op.target_link}

    def running_attempts(self, tags: Tags) -> list[tuple[str, int]]:
        return [(instance_id, int(inst.labels["spot-attempt"])) for instance_id, inst in self._instances(tags)
                if inst.status == "RUNNING" and inst.labels.get("spot-role") == ROLE_ATTEMPT]

    def status(self, instance_id: str) -> str | None:
        inst = self.instance(instance_id)
        return inst.status if inst else None

    def _data(self, instance_id: str) -> Any:
        from airflow_spot_provider.backends.gcp import DATA_DEVICE

        return next(d for d in self.instance(instance_id).disks if d.device_name == DATA_DEVICE)

    def data_disk(self, instance_id: str) -> str:
        # ".../zones/<zone>/disks/<name>" → "<zone>/<name>"
        return "/".join(self._data(instance_id).source.split("/zones/", 1)[1].split("/disks/"))

    def disk_auto_deleted(self, instance_id: str) -> bool:
        return self._data(instance_id).auto_delete

    def disk_in_use(self, disk_id: str) -> bool:
        zone, name = disk_id.split("/")
        return bool(self.clients()[1].get(project=self.project, zone=zone, disk=name).users)

    def vanish(self, instance_id: str) -> None:
        self.fake.lose(instance_id, delete=True)  # GCE forgets the VM; its data disk is not autoDelete
        self.fake.wait_gone(instance_id)

    def assert_helper(self, helper_id: str, instance_id: str) -> None:
        """A standard (not spot) VM named after the attempt, with the attempt's data disk attached read-only."""
        from airflow_spot_provider.backends.gcp import data_disk_name, helper_name

        zone, name = instance_id.split("/")
        assert helper_id == f"{zone}/{helper_name(name)}"
        helper = self.instance(helper_id)
        assert helper.labels["spot-role"] == ROLE_HELPER and helper.scheduling.provisioning_model == "STANDARD"
        assert self._data(helper_id).mode == "READ_ONLY"
        assert self.data_disk(helper_id) == f"{zone}/{data_disk_name(name)}"

    def attempt_url(self, instance_id: str) -> str:
        zone, name = instance_id.split("/")
        return (f"https://console.cloud.google.com/compute/instancesDetail/zones/{zone}/instances/{name}"
                f"?project={self.project}")

    def checkpoint_url(self, path: str) -> str:
        return f"https://console.cloud.google.com/storage/browser/{BUCKET}/{path}"

    def sweep_args(self) -> list[str]:
        return ["sweep", "--backend", "gcp", "--conn-id", self.conn_id, "--option", f"project_id={self.project}",
                "--option", f"api_endpoint={self.fake.endpoint}"]

    def cleanup(self, tags: Tags) -> None:
        from google.api_core import exceptions

        instances, disks, _ = self.clients()
        for instance_id in self.vms(tags):
            zone, name = instance_id.split("/")
            with contextlib.suppress(exceptions.NotFound):
                instances.delete(project=self.project, zone=zone, instance=name).result(timeout=30)
        for disk, _ in self._disks(tags):
            zone, name = disk.split("/")
            with contextlib.suppress(exceptions.NotFound, exceptions.BadRequest):  # the fake's close ends it anyway
                disks.delete(project=self.project, zone=zone, disk=name).result(timeout=30)

    def check_closed(self) -> None:
        assert not self.fake.errors, self.fake.errors  # every response parsed as the real proto
        super().check_closed()


# -- starting one ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _local(root: Path) -> Iterator[Cloud]:
    market = LocalMarket(root / "spot-local")  # where a cluster on this root keeps its local cloud too
    cloud = LocalCloud(root=root, fake=market)
    with _environ({"SPOT_TEST_WORKER_SECRET": cloud.secret}):
        try:
            yield cloud
        finally:
            for item in market.backend.list_instances():  # nothing a test starts may outlive it
                market.backend.terminate(item.instance_id)
    cloud.check_closed()


@contextlib.contextmanager
def _aws(root: Path) -> Iterator[Cloud]:
    from .aws_cloud import FakeAws

    with FakeAws(root / "aws", region=AwsCloud.region) as fake:
        cloud = AwsCloud(root=root, fake=fake, conn_id=f"{AwsCloud.conn_id}_{next(_CONNECTIONS)}",
                         image=fake.client("ec2").describe_images()["Images"][0]["ImageId"])
        name, value = fake.airflow_conn(cloud.conn_id, password=cloud.secret)
        fake.client("s3").create_bucket(Bucket=BUCKET)
        cloud.airflow_env = {name: value, "SPOT_CLUSTER_AWS_AMI": cloud.image, "SPOT_CLUSTER_AWS_BUCKET": BUCKET,
                             "SPOT_CLUSTER_AWS_CONN_ID": cloud.conn_id}
        with _environ({name: value}):
            yield cloud
    cloud.check_closed()


@contextlib.contextmanager
def _gcp(root: Path) -> Iterator[Cloud]:
    from .gcp_fake import FakeGcp, FakeGcs

    project = GcpCloud.project
    with FakeGcs(root / "gcs", project=project) as gcs, FakeGcp(root / "gcp", project=project, gcs=gcs) as fake:
        cloud = GcpCloud(root=root, fake=fake, conn_id=f"{GcpCloud.conn_id}_{next(_CONNECTIONS)}")
        gcs.create_bucket(BUCKET)
        name, value = fake.airflow_conn(cloud.conn_id, project, secret_marker=cloud.secret)
        cloud.airflow_env = {name: value, **gcs.env(), "SPOT_CLUSTER_GCP_ENDPOINT": fake.endpoint,
                             "SPOT_CLUSTER_GCP_PROJECT": project, "SPOT_CLUSTER_GCP_BUCKET": BUCKET,
                             "SPOT_CLUSTER_GCP_CONN_ID": cloud.conn_id}
        with _environ({name: value, **gcs.env()}):
            yield cloud
    cloud.check_closed()


OPENERS = {"local": _local, "aws": _aws, "gcp": _gcp}
NAMES = tuple(OPENERS)


def open_cloud(name: str, root: Path) -> contextlib.AbstractContextManager[Cloud]:
    """Start the cloud ``name`` (its fake, bucket and connection) under ``root``; on exit, stop it and check
    that no VM process outlived it."""
    return OPENERS[name](root)


# -- a real Airflow cluster on one ------------------------------------------------------------------------------
@contextlib.contextmanager
def airflow_on(name: str, root: Path, timings: dict[str, float]) -> Iterator[tuple[Cloud, AirflowCluster]]:
    """The cloud ``name`` started in this process, then a real Airflow cluster whose processes reach it (its
    connection and the DAGs' settings in :attr:`Cloud.airflow_env`); the cluster stops first."""
    with open_cloud(name, root) as cloud, running(AirflowCluster(root, extra_env=cloud.airflow_env),
                                                  timings) as airflow:
        yield cloud, airflow


def live_attempt(cluster: AirflowCluster, cloud: Cloud, dag_id: str, run_id: str, timeout: float = 120) -> str:
    """Wait until the task is deferred on a running attempt VM; return its instance id."""
    cluster.wait_for_state(dag_id, run_id, ("deferred",), timeout)
    live = wait_for(lambda: [i for i, _ in cloud.running_attempts(job(dag_id, run_id)) if cloud.vm_running(i)],
                    60, interval=0.25, what=f"a running attempt VM of {dag_id}")
    assert len(live) == 1, live
    return live[0]
