"""An offline AWS for tests: moto's server plus the EC2 behaviour moto lacks, and a runner for the "VMs".

Three layers, all in this process:

* **moto server** (EC2, S3, ...) on 127.0.0.1, wrapped in a WSGI middleware that counts requests per
  action, makes ``RunInstances`` idempotent on ``ClientToken``, injects launch errors (capacity, price,
  quota, throttling) with EC2's real error XML and HTTP status, refuses any EC2 action on request
  (``refuse``: a revoked permission), and gives spot launches the spot instance request that EC2
  creates for ``InstanceMarketOptions`` (moto creates none).
* **control layer**: spot interruption (IMDS notice, then kill, state reason
  ``Server.SpotInstanceTermination``, spot request ``instance-terminated-by-price``/``closed``),
  rebalance recommendations and infrastructure loss, done by changing moto's in-memory EC2 backend;
  a termination held in ``shutting-down`` (``hold_termination``/``finish_termination``: moto terminates at
  once), and ``ModifyInstanceAttribute``'s block device mappings refused as EC2 refuses them (moto changes a
  terminated instance, and answers a device that is not mapped with a server error).
* **VMs**: the shared runner (``tests/fake_vm.py``) runs each running instance's user data as a local process
  group, with a fake IMDSv2 server, EBS data volumes as directories, and ``shutdown``/``poweroff``/``halt``
  shims after which this fake applies the instance's ``InstanceInitiatedShutdownBehavior``.

The VM's environment stands for its instance profile: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
are the placeholder ``instance-role`` (moto accepts any key), ``AWS_ENDPOINT_URL`` points every AWS SDK
client at the fake, and ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` at the VM's own metadata server.

Layout under ``root``::

    vms/<instance-id>/user-data, console.log, root/ (the VM's "/"), ... (see tests/fake_vm.py)
    vms/<instance-id>/root/data -> volumes/<vol-id>   (volume attached at /dev/sdf or /dev/xvdf)
    volumes/<vol-id>/                                  (an EBS volume's contents; outlives instances)

Usage::

    with FakeAws(tmp_path) as fake:
        ec2 = fake.client("ec2")
        ...
        fake.preempt(instance_id, notice_seconds=2.0)
        fake.wait_gone(instance_id)
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import re
import secrets
import shutil
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

import boto3
from botocore.config import Config
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.exceptions import InvalidInstanceIdError, InvalidSubnetIdError
from moto.ec2.models import ec2_backends
from moto.ec2.models.instances import StateReason
from moto.ec2.models.spot_requests import SpotInstanceRequest
from moto.ec2.utils import random_spot_request_id
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server

from .fake_cloud import LocalServer, QuietHandler
from .fake_vm import VmRunner
from .waiting import wait_for

log = logging.getLogger(__name__)

REGION = "us-east-1"
EC2_API_VERSION = "2016-11-15"
#: Device names at which an attached volume becomes the VM's ``$SPOT_ROOT/data``.
DATA_DEVICES = ("/dev/sdf", "/dev/xvdf")
#: HTTP status EC2 uses for each launch error code (others default to 400).
ERROR_STATUS = {
    "InsufficientInstanceCapacity": 500,
    "InternalError": 500,
    "Unavailable": 503,
    "RequestLimitExceeded": 503,
    "SpotMaxPriceTooLow": 400,
    "MaxSpotInstanceCountExceeded": 400,
    "InstanceLimitExceeded": 400,
    "VcpuLimitExceeded": 400,
    "IdempotentParameterMismatch": 400,
    "UnauthorizedOperation": 403,
    "AuthFailure": 401,
}
#: EC2's own messages for the errors ``refuse`` sends when the test gives none.
ERROR_MESSAGES = {
    "UnauthorizedOperation": "You are not authorized to perform this operation.",
    "AuthFailure": "AWS was not able to validate the provided access credentials",
}
SPOT_TERMINATION = ("Server.SpotInstanceTermination", "Server.SpotInstanceTermination: Spot instance termination")
INTERNAL_ERROR = ("Server.InternalError", "Server.InternalError: Internal error on launch")
INSTANCE_SHUTDOWN = (
    "Client.InstanceInitiatedShutdown", "Client.InstanceInitiatedShutdown: Instance initiated shutdown"
)
SPOT_STATUS_MESSAGES = {
    "fulfilled": "Your spot request is fulfilled.",
    "marked-for-termination": "Spot Instance is marked for termination.",
    "instance-terminated-by-price": "Spot Instance terminated due to price-too-low.",
    "instance-terminated-no-capacity": "Spot Instance terminated due to no available capacity.",
    "instance-terminated-by-user": "Spot Instance terminated due to user-initiated termination.",
    "system-error": "An unexpected system error occurred.",
}
IMDS_MAX_TTL = 21600
#: EC2's codes of the instance states a held termination goes through.
STATE_CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}


def utc_iso(moment: datetime) -> str:
    """IMDS timestamps look like ``2026-11-29T20:17:00Z``."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------------
# WSGI plumbing
# --------------------------------------------------------------------------------------------------


@dataclass
class _Response:
    status: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def ok(self) -> bool:
        return self.status.startswith("2")

    def with_body(self, body: bytes) -> _Response:
        headers = [(k, v) for k, v in self.headers if k.lower() != "content-length"]
        return _Response(self.status, [*headers, ("Content-Length", str(len(body)))], body)


def ec2_error(code: str, message: str, status: int | None = None) -> _Response:
    """An error exactly as the EC2 Query API returns it."""
    status = status or ERROR_STATUS.get(code, 400)
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error></Errors>"
        f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()
    reason = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 500: "Internal Server Error",
              503: "Service Unavailable"}.get(status, "Error")
    return _Response(f"{status} {reason}", [("Content-Type", "text/xml;charset=UTF-8")], b"").with_body(body)


def _terminate_response(changes: list[tuple[str, str, str]]) -> _Response:
    """``TerminateInstances``' answer for (instance id, previous state, current state) triples."""
    items = "".join(
        f"<item><instanceId>{escape(iid)}</instanceId>"
        f"<currentState><code>{STATE_CODES[now]}</code><name>{now}</name></currentState>"
        f"<previousState><code>{STATE_CODES[before]}</code><name>{before}</name></previousState></item>"
        for iid, before, now in changes)
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<TerminateInstancesResponse '
            f'xmlns="http://ec2.amazonaws.com/doc/{EC2_API_VERSION}/"><requestId>{uuid.uuid4()}</requestId>'
            f"<instancesSet>{items}</instancesSet></TerminateInstancesResponse>").encode()
    return _Response("200 OK", [("Content-Type", "text/xml;charset=UTF-8")], b"").with_body(body)


def _indexed(params: dict[str, str], prefix: str, suffix: str = "") -> list[str]:
    """Values of ``<prefix>.1<suffix>``, ``<prefix>.2<suffix>``, ... in order."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)" + re.escape(suffix))
    found = sorted((int(m.group(1)), value) for key, value in params.items() if (m := pattern.fullmatch(key)))
    return [value for _, value in found]


def _request_params(environ: dict[str, Any]) -> dict[str, str]:
    """Query API parameters (form body or query string); the body is put back for moto to read."""
    params = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
    if environ.get("REQUEST_METHOD") == "POST" and environ.get("CONTENT_TYPE", "").startswith(
        "application/x-www-form-urlencoded"
    ):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = BytesIO(body)
        params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    return params


def _credential_service(environ: dict[str, Any]) -> str | None:
    match = re.search(r"Credential=[^/]+/\d+/[^/]+/([^/]+)/", environ.get("HTTP_AUTHORIZATION", ""))
    return match.group(1) if match else None


def _is_ec2(environ: dict[str, Any], params: dict[str, str]) -> bool:
    service = _credential_service(environ)
    return service == "ec2" if service else params.get("Version") == EC2_API_VERSION


def _tag_specs(params: dict[str, str]) -> dict[str, dict[str, str]]:
    """``TagSpecification.N.Tag.M.Key/Value`` → {resource type: {key: value}}."""
    specs: dict[str, dict[str, str]] = {}
    for key, resource in params.items():
        match = re.fullmatch(r"TagSpecification\.(\d+)\.ResourceType", key)
        if not match:
            continue
        prefix, tags = f"TagSpecification.{match.group(1)}.Tag.", specs.setdefault(resource, {})
        for tag_key, name in params.items():
            tag = re.fullmatch(re.escape(prefix) + r"(\d+)\.Key", tag_key)
            if tag:
                tags[name] = params.get(f"{prefix}{tag.group(1)}.Value", "")
    return specs


class _QuietHandler(MotoRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Tests read the fake's counters, not an access log."""


# --------------------------------------------------------------------------------------------------
# moto additions
# --------------------------------------------------------------------------------------------------


class _LinkedSpotRequest(SpotInstanceRequest):
    """The one-time spot request EC2 creates for a ``RunInstances`` spot launch, tied to that instance.

    moto's own constructor launches a new instance; this one adopts the instance RunInstances made.
    """

    # moto's model registry derives the service from the defining module's dotted name.
    __module__ = SpotInstanceRequest.__module__

    def __init__(self, backend: Any, instance: Any, options: dict[str, str], tags: dict[str, dict[str, str]]):
        self._adopted = instance
        super().__init__(
            ec2_backend=backend, spot_request_id=random_spot_request_id(), price=options.get("MaxPrice") or "",
            image_id=instance.image_id, spot_instance_type=options.get("SpotInstanceType") or "one-time",
            valid_from=None, valid_until=None, launch_group=None, availability_zone_group=None,
            key_name=instance.key_name, security_groups=[group.id for group in instance.security_groups],
            user_data=instance.user_data, instance_type=instance.instance_type, placement=instance.placement.zone,
            kernel_id=None, ramdisk_id=None, monitoring_enabled=False, subnet_id=instance.subnet_id, tags=tags,
            spot_fleet_id=None, instance_interruption_behaviour=options.get("InstanceInterruptionBehavior"),
        )
        self.status_message = SPOT_STATUS_MESSAGES["fulfilled"]

    def launch_instance(self) -> Any:
        return self._adopted


def _set_spot_status(request: Any, code: str, state: str | None = None) -> None:
    request._status_code = code
    request.status_message = SPOT_STATUS_MESSAGES.get(code, code)
    if state:
        request.state = state


@dataclass
class _FailRule:
    code: str
    instance_type: str | None
    zone: str | None
    remaining: int | None
    message: str | None
    status: int | None
    #: Refuse only spot launches (``InstanceMarketOptions``): "no spot capacity, on-demand is fine".
    spot_only: bool = False
    #: Launch calls already refused: an SDK retry of one (same ClientToken) is refused again without
    #: counting, so ``times`` counts the caller's launch calls, not botocore's retries of them.
    tokens: set[str] = field(default_factory=set)

    def matches(self, instance_type: str, zone: str | None) -> bool:
        return (self.instance_type in (None, instance_type)) and (self.zone in (None, zone))


def _launch_error_message(code: str, instance_type: str, zone: str | None, params: dict[str, str]) -> str:
    if code == "InsufficientInstanceCapacity":
        return (f"We currently do not have sufficient {instance_type} capacity in the Availability Zone you "
                f"requested ({zone}). Our system will be working on provisioning additional capacity.")
    if code == "SpotMaxPriceTooLow":
        price = params.get("InstanceMarketOptions.SpotOptions.MaxPrice", "0")
        return f"Your Spot request price of {price} is lower than the minimum required Spot request fulfillment price."
    if code == "MaxSpotInstanceCountExceeded":
        return "Max spot instance count exceeded"
    if code == "RequestLimitExceeded":
        return "Request limit exceeded."
    return f"{code} ({instance_type} in {zone})"


# --------------------------------------------------------------------------------------------------
# Fake IMDSv2
# --------------------------------------------------------------------------------------------------


@dataclass
class _Metadata:
    """What one instance's metadata server answers; the control layer changes ``notice``/``rebalance``."""

    instance_id: str
    zone: str
    region: str
    instance_type: str
    lifecycle: str
    image_id: str
    user_data: bytes | None
    notice: dict[str, str] | None = None
    rebalance: dict[str, str] | None = None
    tokens: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def issue_token(self, ttl: int) -> str:
        token = secrets.token_urlsafe(32)
        with self.lock:
            self.tokens[token] = time.monotonic() + ttl
        return token

    def token_valid(self, token: str | None) -> bool:
        with self.lock:
            expiry = self.tokens.get(token or "")
        return expiry is not None and expiry > time.monotonic()

    def lookup(self, path: str) -> str | bytes | None:
        if path == "/latest/user-data":
            return self.user_data
        documents: dict[str, str | None] = {
            "instance-id": self.instance_id,
            "instance-type": self.instance_type,
            "instance-life-cycle": self.lifecycle,
            "ami-id": self.image_id,
            "placement/availability-zone": self.zone,
            "placement/region": self.region,
            "spot/instance-action": json.dumps(self.notice) if self.notice else None,
            "events/recommendations/rebalance": json.dumps(self.rebalance) if self.rebalance else None,
        }
        return documents.get(path.removeprefix("/latest/meta-data/").rstrip("/"))


class _ImdsHandler(QuietHandler):
    """IMDSv2 only: a session token from ``PUT /latest/api/token`` is required on every GET."""

    metadata: _Metadata  # set on the per-instance subclass

    def do_PUT(self) -> None:
        if self.path != "/latest/api/token":
            return self.send(404, b"Not Found")
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= IMDS_MAX_TTL:
            return self.send(400, b"Bad Request")
        token = self.metadata.issue_token(int(ttl))
        self.send(200, token.encode(), headers={"X-aws-ec2-metadata-token-ttl-seconds": ttl})

    def do_GET(self) -> None:
        if not self.metadata.token_valid(self.headers.get("X-aws-ec2-metadata-token")):
            return self.send(401, b"Unauthorized")
        value = self.metadata.lookup(self.path)
        if value is None:
            return self.send(404, b"Not Found")
        self.send(200, value if isinstance(value, bytes) else value.encode())


def _start_imds(metadata: _Metadata) -> LocalServer:
    return LocalServer(type("ImdsHandler", (_ImdsHandler,), {"metadata": metadata}), f"imds-{metadata.instance_id}")


# --------------------------------------------------------------------------------------------------
# VM runner state
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _InstanceView:
    """A consistent snapshot of one moto instance, taken under the state lock."""

    instance_id: str
    state: str
    user_data: bytes | None
    zone: str
    instance_type: str
    lifecycle: str
    image_id: str
    data_volume: str | None


def _snapshot(instance: Any) -> _InstanceView:
    user_data = base64.b64decode(instance.user_data.as_bytes()) if instance.user_data else None
    data_volume = next((instance.block_device_mapping[d].volume_id for d in DATA_DEVICES
                        if d in instance.block_device_mapping), None)
    return _InstanceView(
        instance_id=instance.id, state=instance._state.name, user_data=user_data, zone=instance.placement.zone,
        instance_type=instance.instance_type, lifecycle=instance.lifecycle or "on-demand",
        image_id=instance.image_id, data_volume=data_volume,
    )


# --------------------------------------------------------------------------------------------------
# The fake cloud
# --------------------------------------------------------------------------------------------------


class FakeAws:
    """moto + EC2 behaviour moto lacks + a VM runner. Use as a context manager, or call ``close()``.

    moto keeps its state in module globals, so one FakeAws may be open per process; it starts empty.
    Implements :class:`tests.fake_cloud.FakeCloud` (ids: EC2 instance ids).
    """

    name = "aws"
    _open: FakeAws | None = None

    def __init__(self, root: str | Path | None = None, region: str = REGION, poll_interval: float = 0.1) -> None:
        if FakeAws._open is not None:
            raise RuntimeError("another FakeAws is open in this process (moto state is global): close it first")
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="fake-aws-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.region = region
        self.account = DEFAULT_ACCOUNT_ID
        # The state lock serialises moto requests with the control layer and the runner's snapshots
        # (moto's backend is plain dicts). Order when both are needed: runner lock, then state lock.
        self._state_lock = threading.RLock()
        self._runner_lock = threading.RLock()
        self._counts_lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._fail_rules: list[_FailRule] = []
        self._throttles: dict[str, int] = {}
        self._refusals: dict[str, tuple[str, str]] = {}
        self._tokens: dict[str, tuple[dict[str, str], _Response]] = {}
        self._vms = VmRunner(self.root / "vms", "fake-aws-runner", self._step_all, interval=poll_interval)
        self._imds: dict[str, LocalServer] = {}  # the metadata servers of booted instances, until they end
        self._metadata: dict[str, _Metadata] = {}
        #: Instances whose TerminateInstances stops at ``shutting-down`` until ``finish_termination``.
        self._held: set[str] = set()
        self._closed = False
        self._server = self._start_moto()
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"
        try:
            self.reset()
        except OSError:
            self._server.shutdown()
            raise
        FakeAws._open = self
        self._vms.start()

    # ---- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> FakeAws:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the runner, kill every VM, stop the metadata servers and moto. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._vms.close()  # not under the runner lock: the runner's last tick may be waiting for it
        with self._runner_lock:
            self._stop_imds()
        self._server.shutdown()
        self._server.server_close()
        FakeAws._open = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def reset(self) -> None:
        """Back to an empty cloud: VMs killed, moto state reset, counters, rules and tokens cleared."""
        with self._runner_lock:
            self._vms.kill_all()
            self._stop_imds()
            self._metadata.clear()
            request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
        with self._state_lock:
            self._fail_rules.clear()
            self._throttles.clear()
            self._refusals.clear()
            self._tokens.clear()
            self._held.clear()
        self.reset_calls()
        self._vms.errors.clear()

    # ---- accessors --------------------------------------------------------------------------------

    @property
    def ec2_backend(self) -> Any:
        """moto's in-memory EC2 backend (a new object after every reset)."""
        return ec2_backends[self.account][self.region]

    @property
    def runner_errors(self) -> list[str]:
        """Errors raised inside the runner thread (tests assert this stays empty)."""
        return self._vms.errors

    @property
    def calls(self) -> collections.Counter[str]:
        """Requests received per Query API action (including the ones answered with an injected error)."""
        with self._counts_lock:
            return collections.Counter(self._counts)

    def reset_calls(self) -> None:
        with self._counts_lock:
            self._counts.clear()

    def client(self, service: str, max_attempts: int | None = None, **kwargs: Any) -> Any:
        """A boto3 client for tests; ``max_attempts=1`` shows what a caller sees without botocore's retries.

        ``max_attempts`` counts every attempt (botocore's ``total_max_attempts``): botocore's own
        ``retries={"max_attempts": 1}`` means one *retry*, i.e. two attempts.
        """
        if max_attempts is not None:
            kwargs["config"] = Config(retries={"total_max_attempts": max_attempts, "mode": "standard"})
        return boto3.client(service, endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id="x", aws_secret_access_key="x", **kwargs)

    def airflow_conn(self, conn_id: str, password: str = "x", login: str = "x") -> tuple[str, str]:
        """``(env var name, JSON value)`` of an Airflow AWS connection to this fake."""
        value = {"conn_type": "aws", "login": login, "password": password,
                 "extra": {"endpoint_url": self.endpoint, "region_name": self.region}}
        return f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(value)

    def default_network(self) -> dict[str, str]:
        """Availability zone → subnet id of the default VPC (moto creates one default subnet per zone)."""
        with self._state_lock:
            return {zone: subnet.id for zone, subnet in sorted(self.ec2_backend.get_default_subnets().items())}

    def vm_dir(self, instance_id: str) -> Path:
        return self._vms.vm_dir(instance_id)

    def data_dir(self, instance_id: str) -> Path:
        return self._vms.data_dir(instance_id)

    def volume_dir(self, volume_id: str) -> Path:
        return self.root / "volumes" / volume_id

    def console(self, instance_id: str) -> str:
        return self._vms.console(instance_id)

    def imds_endpoint(self, instance_id: str) -> str | None:
        with self._runner_lock:
            server = self._imds.get(instance_id)
            return None if server is None else f"http://127.0.0.1:{server.port}/"

    def instance_state(self, instance_id: str) -> str:
        with self._state_lock:
            return self.ec2_backend.get_instance(instance_id)._state.name

    def processes_alive(self) -> list[int]:
        """Pids of VM processes (any instance, live or ended) that are still running."""
        return self._vms.processes_alive()

    def tracked(self, instance_id: str) -> set[int]:
        """Pids the runner has recorded as the VM's: killed even after they leave its session."""
        return self._vms.tracked(instance_id)

    def wait_gone(self, instance_id: str, timeout: float = 60.0) -> str:
        """Wait until the instance is terminated or stopped and its processes are dead; returns the state."""

        def gone() -> str | None:
            state = self.instance_state(instance_id)
            return state if state in ("terminated", "stopped") and not self._vms.running(instance_id) else None

        return wait_for(gone, timeout, what=f"{instance_id} to be gone")

    # ---- request rules ---------------------------------------------------------------------------

    def fail_launch(self, code: str, instance_type: str | None = None, zone: str | None = None,
                    times: int | None = None, message: str | None = None, status: int | None = None,
                    spot_only: bool = False) -> None:
        """Matching RunInstances calls fail with EC2's ``code`` (``times=None``: until ``clear_failures``).

        ``times`` counts launch calls by ``ClientToken``: the SDK's own retries of a call are refused too."""
        with self._state_lock:
            self._fail_rules.append(_FailRule(code, instance_type, zone, times, message, status, spot_only))

    def clear_failures(self) -> None:
        with self._state_lock:
            self._fail_rules.clear()
            self._throttles.clear()
            self._refusals.clear()

    def throttle(self, times: int = 1, action: str = "RunInstances") -> None:
        """The next ``times`` calls of ``action`` get ``RequestLimitExceeded`` (503)."""
        with self._state_lock:
            self._throttles[action] = self._throttles.get(action, 0) + times

    def refuse(self, action: str, code: str = "UnauthorizedOperation", message: str | None = None) -> None:
        """Every call of the EC2 ``action`` fails with ``code`` until ``clear_failures`` (a revoked permission)."""
        with self._state_lock:
            self._refusals[action] = (code, message or ERROR_MESSAGES.get(code, code))

    # ---- control layer -----------------------------------------------------------------------------

    def preempt(self, instance_id: str, notice_seconds: float | None = 2.0,
                spot_status: str = "instance-terminated-by-price") -> None:
        """Interrupt a spot instance: IMDS notice now, kill after ``notice_seconds`` (None: kill at once)."""
        with self._runner_lock:
            self._require_running(instance_id)
            if notice_seconds is None:
                self._terminate_by_service(instance_id, SPOT_TERMINATION, spot_status)
                return
            kill_at = datetime.now(timezone.utc) + timedelta(seconds=notice_seconds)
            self._metadata_for(instance_id).notice = {"action": "terminate", "time": utc_iso(kill_at)}
            with self._state_lock:
                if request := self._spot_request_of(instance_id):
                    _set_spot_status(request, "marked-for-termination")
            self._vms.schedule(instance_id, notice_seconds, lambda: self._reclaim(instance_id, spot_status))

    def rebalance(self, instance_id: str) -> None:
        """Publish a rebalance recommendation in the instance's IMDS."""
        with self._runner_lock:
            self._require_running(instance_id)
            self._metadata_for(instance_id).rebalance = {"noticeTime": utc_iso(datetime.now(timezone.utc))}

    def lose(self, instance_id: str, spot_status: str = "system-error") -> None:
        """An infrastructure loss: killed at once, terminated with ``Server.InternalError``, no notice."""
        with self._runner_lock:
            self._require_running(instance_id)
            self._terminate_by_service(instance_id, INTERNAL_ERROR, spot_status)

    def hold_termination(self, instance_id: str) -> None:
        """TerminateInstances of this instance leaves it ``shutting-down`` until :meth:`finish_termination`.

        What EC2 shows for the seconds to minutes a termination takes: the VM is killed at once, its volumes
        stay attached (``in-use``: DeleteVolume is refused), DescribeInstances says ``shutting-down``."""
        with self._state_lock:
            self.ec2_backend.get_instance(instance_id)  # an unknown id fails here, not in a later call
            self._held.add(instance_id)

    def finish_termination(self, instance_id: str) -> None:
        """End a held termination: ``terminated``, volumes detached, the ``DeleteOnTermination`` ones deleted."""
        with self._state_lock:
            self._held.discard(instance_id)
            instance = self.ec2_backend.get_instance(instance_id)
            if instance._state.name == "shutting-down":
                instance.terminate()  # moto's: detaches every volume, deletes those marked DeleteOnTermination

    def _require_running(self, instance_id: str) -> None:
        state = self.instance_state(instance_id)
        if state != "running":
            raise ValueError(f"{instance_id} is {state}, not running")

    def _metadata_for(self, instance_id: str) -> _Metadata:
        if instance_id not in self._metadata:
            with self._state_lock:
                view = _snapshot(self.ec2_backend.get_instance(instance_id))
            self._metadata[instance_id] = _Metadata(
                instance_id=instance_id, zone=view.zone, region=self.region, instance_type=view.instance_type,
                lifecycle=view.lifecycle, image_id=view.image_id, user_data=view.user_data,
            )
        return self._metadata[instance_id]

    def _spot_request_of(self, instance_id: str) -> Any:
        for request in list(self.ec2_backend.spot_instance_requests.values()):
            if getattr(getattr(request, "instance", None), "id", None) == instance_id:
                return request
        return None

    def _reclaim(self, instance_id: str, spot_status: str) -> None:
        """The end of a spot interruption's notice."""
        with self._runner_lock:
            self._terminate_by_service(instance_id, SPOT_TERMINATION, spot_status)

    def _terminate_by_service(self, instance_id: str, reason: tuple[str, str], spot_status: str) -> None:
        """Kill the VM first (nothing it does may land after "terminated"), then record the cloud's facts."""
        self._vms.cancel(instance_id)
        self._end_vm(instance_id)
        with self._state_lock:
            instance = self.ec2_backend.get_instance(instance_id)
            if instance._state.name != "terminated":
                instance.terminate()
            instance.state_reason = StateReason(reason[1], reason[0])
            instance._reason = f"Service initiated ({datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} GMT)"
            if request := self._spot_request_of(instance_id):
                _set_spot_status(request, spot_status, "closed")

    # ---- moto server + middleware ----------------------------------------------------------------

    def _start_moto(self) -> BaseWSGIServer:
        app = DomainDispatcherApplication(create_backend_app)
        self._app = app
        server = make_server("127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_QuietHandler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                         name="fake-aws-moto").start()
        return server

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        params = _request_params(environ)
        action = params.get("Action", "")
        if action:
            with self._counts_lock:
                self._counts[action] += 1
        with self._state_lock:
            if action and _is_ec2(environ, params):
                response = self._ec2_request(environ, action, params)
            else:
                response = self._call_moto(environ)
        start_response(response.status, response.headers)
        return [response.body]

    def _ec2_request(self, environ: dict[str, Any], action: str, params: dict[str, str]) -> _Response:
        if refusal := self._refusals.get(action):
            return ec2_error(*refusal)
        if self._throttles.get(action):
            self._throttles[action] -= 1
            return ec2_error("RequestLimitExceeded", "Request limit exceeded.")
        if action == "TerminateInstances" and (held := self._held_termination(params)) is not None:
            return held
        if action == "ModifyInstanceAttribute" and (refused := self._refused_modification(params)) is not None:
            return refused
        if action != "RunInstances":
            return self._call_moto(environ)
        token = params.get("ClientToken")
        if token and token in self._tokens:
            first_params, first_response = self._tokens[token]
            if first_params != params:
                return ec2_error("IdempotentParameterMismatch", "Arguments on this idempotent request are "
                                 "inconsistent with arguments used in previous request(s).")
            return first_response
        if failure := self._injected_failure(params):
            return failure
        response = self._call_moto(environ)
        if response.ok:
            response = self._link_spot_requests(response, params)
            if token:
                self._tokens[token] = (params, response)
        return response

    def _held_termination(self, params: dict[str, str]) -> _Response | None:
        """TerminateInstances of held instances: ``shutting-down`` (the runner kills the VM), volumes attached."""
        ids = _indexed(params, "InstanceId")
        held = [i for i in ids if i in self._held]
        if not held:
            return None
        if len(held) != len(ids):
            return ec2_error("InternalError", "fake: one call may not mix held and other instances", 500)
        changes = []
        for instance_id in held:
            instance = self.ec2_backend.get_instance(instance_id)
            before = instance._state.name
            if before not in ("shutting-down", "terminated"):
                instance._state.name, instance._state.code = "shutting-down", STATE_CODES["shutting-down"]
                instance._reason = f"User initiated ({datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} GMT)"
                instance.state_reason = StateReason("Client.UserInitiatedShutdown: User initiated shutdown",
                                                    "Client.UserInitiatedShutdown")
            changes.append((instance_id, before, instance._state.name))
        return _terminate_response(changes)

    def _refused_modification(self, params: dict[str, str]) -> _Response | None:
        """EC2's refusals of a ``BlockDeviceMapping`` change, which moto makes anyway or answers with a 500."""
        devices = _indexed(params, "BlockDeviceMapping", ".DeviceName")
        if not devices:
            return None
        instance_id = params.get("InstanceId", "")
        try:
            instance = self.ec2_backend.get_instance(instance_id)
        except InvalidInstanceIdError:
            return None  # moto answers with EC2's own NotFound error
        if instance._state.name in ("shutting-down", "terminated"):
            return ec2_error("IncorrectInstanceState", f"The instance '{instance_id}' is not in a state from which "
                                                       "it can be modified.")
        for index, device in enumerate(devices, start=1):
            if device not in instance.block_device_mapping:
                return ec2_error("InvalidInstanceAttributeValue", f"No device is currently mapped at {device}")
            flag = params.get(f"BlockDeviceMapping.{index}.Ebs.DeleteOnTermination")
            if flag not in (None, "true", "false"):
                return ec2_error("InvalidParameterValue", f"Value ({flag}) for parameter DeleteOnTermination is "
                                                          "invalid.")
        return None

    def _injected_failure(self, params: dict[str, str]) -> _Response | None:
        instance_type = params.get("InstanceType", "m1.small")  # moto's default type
        zone = self._request_zone(params)
        for rule in list(self._fail_rules):
            if not rule.matches(instance_type, zone):
                continue
            if rule.spot_only and params.get("InstanceMarketOptions.MarketType") != "spot":
                continue
            token = params.get("ClientToken")
            retry = bool(token) and token in rule.tokens
            if rule.remaining is not None and not retry:
                if rule.remaining <= 0:
                    continue  # used up: only the retries of the calls it refused are still refused
                rule.remaining -= 1
            if token:
                rule.tokens.add(token)
            message = rule.message or _launch_error_message(rule.code, instance_type, zone, params)
            return ec2_error(rule.code, message, rule.status)
        return None

    def _request_zone(self, params: dict[str, str]) -> str | None:
        """The zone EC2 (and moto) would launch in: placement, else the subnet's zone, else moto's default."""
        if zone := params.get("Placement.AvailabilityZone"):
            return zone
        subnet_id = params.get("SubnetId") or params.get("NetworkInterface.1.SubnetId")
        if not subnet_id:
            return f"{self.region}a"
        try:
            return self.ec2_backend.get_subnet(subnet_id).availability_zone
        except InvalidSubnetIdError:
            return None  # moto answers the launch with its own error

    def _call_moto(self, environ: dict[str, Any]) -> _Response:
        captured: dict[str, Any] = {}
        chunks: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable:
            captured.update(status=status, headers=list(headers))
            return chunks.append

        result = self._app(environ, start_response)
        try:
            chunks.extend(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        return _Response(captured["status"], captured["headers"], b"".join(chunks))

    def _link_spot_requests(self, response: _Response, params: dict[str, str]) -> _Response:
        """Give each spot instance of a fresh reservation the spot request EC2 would have created."""
        match = re.search(rb"<reservationId>([^<]+)</reservationId>", response.body)
        reservation = self.ec2_backend.reservations.get(match.group(1).decode()) if match else None
        if reservation is None:
            return response
        options = {key.rsplit(".", 1)[1]: value for key, value in params.items()
                   if key.startswith("InstanceMarketOptions.SpotOptions.")}
        tags = _tag_specs(params)
        body = response.body
        for instance in reservation.instances:
            if instance.lifecycle != "spot":
                continue
            request = _LinkedSpotRequest(self.ec2_backend, instance, options, tags)
            self.ec2_backend.spot_instance_requests[request.id] = request
            instance.spot_instance_request_id = request.id  # serialised as SpotInstanceRequestId
            marker = f"<instanceId>{instance.id}</instanceId>".encode()
            added = f"<spotInstanceRequestId>{request.id}</spotInstanceRequestId>".encode()
            body = body.replace(marker, marker + added)
        return response.with_body(body)

    # ---- VMs ---------------------------------------------------------------------------------------

    def _step_all(self) -> None:
        """One runner tick: boot what started running, end what stopped, apply shutdowns from inside."""
        with self._runner_lock:
            if self._closed:
                return
            with self._state_lock:
                views = {i.id: _snapshot(i) for i in self.ec2_backend.all_instances()}
                self._close_requests_of_terminated()
            for view in views.values():
                self._step(view)
            for instance_id in list(self._imds):
                if instance_id not in views:
                    self._end_vm(instance_id)

    def _step(self, view: _InstanceView) -> None:
        boot = self._vms.last_boot(view.instance_id)
        if boot is None:  # user data runs once, at the first boot (as cloud-init runs it)
            if view.state == "running" and view.user_data is not None:
                self._boot(view)
            return
        if boot.killed:
            return
        if view.state != "running":
            self._end_vm(view.instance_id)
        elif self._vms.shutdown_requested(view.instance_id):
            self._instance_shutdown(view.instance_id)
        else:
            self._mount_data(view)

    def _close_requests_of_terminated(self) -> None:
        """EC2 closes a one-time spot request when its instance is terminated by the user."""
        for request in list(self.ec2_backend.spot_instance_requests.values()):
            instance = getattr(request, "instance", None)
            if request.state == "active" and instance is not None and instance._state.name == "terminated":
                _set_spot_status(request, "instance-terminated-by-user", "closed")

    def _boot(self, view: _InstanceView) -> None:
        imds = _start_imds(self._metadata_for(view.instance_id))
        self._imds[view.instance_id] = imds
        self._mount_data(view)
        # The VM's environment stands for its instance profile (moto accepts any key).
        self._vms.boot(view.instance_id, view.user_data or b"", {
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{imds.port}/",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "instance-role",
            "AWS_SECRET_ACCESS_KEY": "instance-role",
            "AWS_DEFAULT_REGION": self.region,
        }, "user-data")

    def _mount_data(self, view: _InstanceView) -> None:
        """``root/data`` is the volume attached at the data device, and nothing when none is."""
        volume = self.volume_dir(view.data_volume) if view.data_volume else None
        self._vms.mount_data(view.instance_id, volume)

    def _instance_shutdown(self, instance_id: str) -> None:
        """``shutdown`` from inside the VM: stop everything, then apply the shutdown behaviour."""
        self._end_vm(instance_id)
        with self._state_lock:
            instance = self.ec2_backend.get_instance(instance_id)
            if instance._state.name != "running":
                return
            if instance.instance_initiated_shutdown_behavior == "terminate":
                instance.terminate()
            else:
                instance.stop()
            instance.state_reason = StateReason(INSTANCE_SHUTDOWN[1], INSTANCE_SHUTDOWN[0])

    def _end_vm(self, instance_id: str) -> None:
        """The VM is gone: SIGKILL all its processes and stop its metadata server; its disks stay."""
        self._vms.kill(instance_id)
        if imds := self._imds.pop(instance_id, None):
            imds.stop()

    def _stop_imds(self) -> None:
        for instance_id in list(self._imds):
            self._imds.pop(instance_id).stop()
