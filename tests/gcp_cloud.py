"""An offline Google Cloud for tests: a Compute Engine REST fake, a per-VM metadata server, a VM runner and a
GCS emulator.

- ``FakeGcp`` serves the Compute v1 REST paths the provider uses (instances, disks, snapshots, zone/global
  operations) on 127.0.0.1, plus an OAuth ``/token`` endpoint so real service-account credentials work.
  It is strict where the real API and the real client are: every request body is parsed against the
  ``compute_v1`` protos (unknown fields are a 400), every response is checked against them (a fake that
  drifts records the bug in ``fake.errors``), ids are digit strings, ``requestId`` must be a UUID and
  deduplicates, labels and names follow the GCE formats, fingerprints are enforced.
- Control layer: ``preempt`` (notice on the metadata server, ACPI soft-off SIGTERM, hard-off after the
  notice, a ``compute.instances.preempted`` zone operation), ``lose`` (host loss), ``fail_insert``
  (capacity, quota and rate-limit errors shaped like the real ones), ``hold_deletion``/``finish_deletion``
  (a deleted VM stays ``STOPPING`` with its delete operation ``RUNNING`` until the test lets it go).
- The VM runner executes each RUNNING instance's ``startup-script`` as a local process group with a clean
  environment pointing at that instance's metadata server and the GCS emulator; disks are directories,
  and the disk attached as ``spot-data`` appears at ``$SPOT_ROOT/data``.
- ``FakeGcs`` runs the ``gcp-storage-emulator`` package as a subprocess. Importing this module turns off
  gcsfs's gRPC bucket probing (see GCSFS_PLAIN) unless gcsfs was imported first.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fnmatch
import functools
import hashlib
import heapq
import itertools
import json
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psutil

# gcsfs >= 2026.x defaults to ExtendedGcsFileSystem, which asks the storage-control gRPC API for every bucket's
# layout; no emulator speaks gRPC, so each call hangs ~60 s. The flag is read when gcsfs is imported.
GCSFS_PLAIN = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
for _name, _value in GCSFS_PLAIN.items():
    os.environ.setdefault(_name, _value)

API_ROOT = "https://www.googleapis.com/compute/v1/"
DATA_DEVICE = "spot-data"
TICK = 0.05
MARKER_ENV = "FAKE_GCE_VM"  # lets the runner find every process of a VM, even ones that left its process group
SCOPE_CLOUD = "https://www.googleapis.com/auth/cloud-platform"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"

NAME_RE = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
LABEL_KEY_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE_RE = re.compile(r"[a-z0-9_-]{0,63}")
METADATA_KEY_RE = re.compile(r"[a-zA-Z0-9_-]{1,128}")
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
ZERO_UUID = "00000000-0000-0000-0000-000000000000"
DISK_REF_RE = re.compile(r"(?:.*/)?(?:projects/(?P<project>[^/]+)/)?zones/(?P<zone>[^/]+)/disks/(?P<name>[^/]+)")
SNAPSHOT_REF_RE = re.compile(r"(?:.*/)?(?:projects/(?P<project>[^/]+)/)?global/snapshots/(?P<name>[^/]+)")
MACHINE_TYPE_RE = re.compile(r"(?:.*/)?zones/(?P<zone>[^/]+)/machineTypes/(?P<type>[a-z0-9][a-z0-9-]*)")

# Errors the real API reports on the insert's operation (HTTP 200, operation DONE with `error`), with the
# operation's httpErrorStatusCode / httpErrorMessage, which decide the exception google-api-core raises.
OPERATION_ERRORS: dict[str, tuple[int, str, str]] = {
    "ZONE_RESOURCE_POOL_EXHAUSTED": (503, "SERVICE UNAVAILABLE", "The zone 'projects/{project}/zones/{zone}' does "
                                     "not have enough resources available to fulfill the request.  Try a different "
                                     "zone, or try again later."),
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS": (503, "SERVICE UNAVAILABLE", "The zone 'projects/{project}/zones/"
                                                  "{zone}' does not have enough resources available to fulfill the "
                                                  "request.  '(resource type:compute)'."),
    "QUOTA_EXCEEDED": (403, "FORBIDDEN", "Quota 'PREEMPTIBLE_CPUS' exceeded.  Limit: 8.0 in region {region}."),
}
# Errors the real API returns on the insert call itself.
HTTP_ERRORS: dict[str, tuple[int, str]] = {
    "rateLimitExceeded": (429, "Rate Limit Exceeded"),
    "backendError": (503, "Backend Error"),
    "internalError": (500, "Internal Error"),
}
HTTP_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
                412: "Precondition Failed", 429: "Too Many Requests", 500: "Internal Server Error",
                503: "Service Unavailable"}


class ApiError(Exception):
    """An error response in the shape of the Compute API."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.status, "message": self.message,
                          "errors": [{"message": self.message, "domain": "global", "reason": self.reason}]}}


def _invalid(field_name: str, value: Any, why: str) -> ApiError:
    return ApiError(400, "invalid", f"Invalid value for field '{field_name}': '{value}'. {why}")


def _not_found(path: str) -> ApiError:
    return ApiError(404, "notFound", f"The resource '{path}' was not found")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _fingerprint() -> str:
    return base64.b64encode(secrets.token_bytes(8)).decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- list filters ------------------------------------------------------------------------------------------
class FilterError(ValueError):
    pass


_COMPARISON = re.compile(r"\s*(?P<field>[A-Za-z_][\w.\-]*)\s*(?P<op>!=|=|:|eq\b|ne\b)\s*")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"|\'((?:[^\'\\]|\\.)*)\'')
_BARE = re.compile(r"[^\s()]+")


def compile_filter(text: str) -> Callable[[dict[str, Any]], bool]:
    """The `filter` syntax of Compute list calls: `labels.k = "v"`, `!=`, `:` (has; `:*` = present),
    `eq`/`ne` (regex, full match), parentheses, NOT / `-`, AND (explicit or by juxtaposition) and OR
    (which binds tighter than AND, as in AIP-160)."""
    if not text or not text.strip():
        return lambda resource: True
    parser = _FilterParser(text)
    predicate = parser.conjunction()
    parser.skip_ws()
    if parser.pos != len(text):
        raise FilterError(f"unexpected {text[parser.pos:]!r}")
    return predicate


class _FilterParser:
    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def keyword(self, word: str) -> bool:
        match = re.compile(rf"\s*{word}(?=[\s(])").match(self.text, self.pos)
        if match:
            self.pos = match.end()
        return bool(match)

    def literal(self, char: str) -> bool:
        self.skip_ws()
        if self.text.startswith(char, self.pos):
            self.pos += len(char)
            return True
        return False

    def conjunction(self) -> Callable[[dict[str, Any]], bool]:
        terms = [self.disjunction()]
        while True:
            self.skip_ws()
            if self.pos >= len(self.text) or self.text[self.pos] == ")":
                break
            self.keyword("AND")
            terms.append(self.disjunction())
        return lambda resource: all(term(resource) for term in terms)

    def disjunction(self) -> Callable[[dict[str, Any]], bool]:
        factors = [self.factor()]
        while self.keyword("OR"):
            factors.append(self.factor())
        return factors[0] if len(factors) == 1 else (lambda resource: any(f(resource) for f in factors))

    def factor(self) -> Callable[[dict[str, Any]], bool]:
        if self.keyword("NOT") or self.literal("-"):
            inner = self.factor()
            return lambda resource: not inner(resource)
        if self.literal("("):
            inner = self.conjunction()
            if not self.literal(")"):
                raise FilterError("missing ')'")
            return inner
        return self.comparison()

    def comparison(self) -> Callable[[dict[str, Any]], bool]:
        match = _COMPARISON.match(self.text, self.pos)
        if not match:
            raise FilterError(f"expected a comparison at {self.text[self.pos:]!r}")
        self.pos = match.end()
        quoted = _QUOTED.match(self.text, self.pos)
        if quoted:
            raw = quoted.group(1) if quoted.group(1) is not None else quoted.group(2)
            value = re.sub(r"\\(.)", r"\1", raw)
            self.pos = quoted.end()
        else:
            bare = _BARE.match(self.text, self.pos)
            if not bare:
                raise FilterError(f"missing value after {match.group(0).strip()!r}")
            value, self.pos = bare.group(0), bare.end()
        path, op = match.group("field").split("."), match.group("op")
        if op in ("eq", "ne"):
            try:
                pattern = re.compile(value)
            except re.error as err:
                raise FilterError(f"bad regular expression {value!r}: {err}") from None
            return lambda resource: _regex_test(_lookup(resource, path), pattern, op == "ne")
        return lambda resource: _compare(_lookup(resource, path), op, value)


def _lookup(resource: Any, path: list[str]) -> list[Any]:
    values = [resource]
    for part in path:
        found: list[Any] = []
        for value in values:
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict) and part in item:
                    found.append(item[part])
        values = found
    return [item for value in values for item in (value if isinstance(value, list) else [value])]


def _as_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _compare(values: list[Any], op: str, expected: str) -> bool:
    if op == ":":
        return bool(values) if expected == "*" else any(expected in _as_text(v) for v in values)
    matched = any(fnmatch.fnmatchcase(_as_text(v), expected) if "*" in expected else _as_text(v) == expected
                  for v in values)
    return matched if op == "=" else not matched


def _regex_test(values: list[Any], pattern: re.Pattern[str], negate: bool) -> bool:
    matched = any(pattern.fullmatch(_as_text(v)) for v in values)
    return not matched if negate else matched


# -- protos: the real client's message types are the schema ----------------------------------------------------
@functools.cache
def _message_class(name: str) -> Any:
    from google.cloud import compute_v1

    return getattr(compute_v1, name).pb()


def parse_message(type_name: str, raw: bytes | str, where: str) -> dict[str, Any]:
    """Parse a request body the way the API does (unknown field → 400) and return it in canonical camelCase."""
    from google.protobuf import json_format

    message = _message_class(type_name)()
    try:
        json_format.Parse(raw or b"{}", message, ignore_unknown_fields=False)
    except json_format.ParseError as err:
        raise ApiError(400, "invalid", f"Invalid JSON payload received at '{where}'. {err}") from None
    return json_format.MessageToDict(message)


def check_message(type_name: str, payload: dict[str, Any] | str) -> None:
    """Raise if the real client could not parse `payload` as `type_name` (wrong names or types)."""
    from google.protobuf import json_format

    text = payload if isinstance(payload, str) else json.dumps(payload)
    json_format.Parse(text, _message_class(type_name)(), ignore_unknown_fields=False)


# Request bodies, by method; responses default to Operation.
REQUEST_TYPES = {"instances.insert": "Instance", "instances.attachDisk": "AttachedDisk",
                 "instances.setLabels": "InstancesSetLabelsRequest", "instances.setMetadata": "Metadata",
                 "disks.insert": "Disk", "disks.createSnapshot": "Snapshot", "disks.setLabels": "ZoneSetLabelsRequest"}
RESPONSE_TYPES = {"instances.get": "Instance", "instances.list": "InstanceList",
                  "instances.aggregatedList": "InstanceAggregatedList",
                  "instances.getSerialPortOutput": "SerialPortOutput", "disks.get": "Disk", "disks.list": "DiskList",
                  "disks.aggregatedList": "DiskAggregatedList", "snapshots.get": "Snapshot",
                  "snapshots.list": "SnapshotList", "zoneOperations.list": "OperationList",
                  "globalOperations.list": "OperationList",
                  "globalOperations.aggregatedList": "OperationAggregatedList", "zoneOperations.delete": None,
                  "oauth.token": None}

_P = r"/compute/v1/projects/(?P<project>[^/]+)"
_Z = _P + r"/zones/(?P<zone>[^/]+)"
_I = _Z + r"/instances/(?P<name>[^/]+)"
_D = _Z + r"/disks/(?P<name>[^/]+)"
ROUTES: list[tuple[str, re.Pattern[str], str]] = [(verb, re.compile(path), name) for verb, path, name in [
    ("POST", _Z + "/instances", "instances.insert"),
    ("GET", _Z + "/instances", "instances.list"),
    ("GET", _P + "/aggregated/instances", "instances.aggregatedList"),
    ("GET", _I, "instances.get"),
    ("DELETE", _I, "instances.delete"),
    ("POST", _I + "/start", "instances.start"),
    ("POST", _I + "/stop", "instances.stop"),
    ("POST", _I + "/attachDisk", "instances.attachDisk"),
    ("POST", _I + "/detachDisk", "instances.detachDisk"),
    ("POST", _I + "/setLabels", "instances.setLabels"),
    ("POST", _I + "/setMetadata", "instances.setMetadata"),
    ("POST", _I + "/setDiskAutoDelete", "instances.setDiskAutoDelete"),
    ("GET", _I + "/serialPort", "instances.getSerialPortOutput"),
    ("POST", _Z + "/disks", "disks.insert"),
    ("GET", _Z + "/disks", "disks.list"),
    ("GET", _P + "/aggregated/disks", "disks.aggregatedList"),
    ("GET", _D, "disks.get"),
    ("DELETE", _D, "disks.delete"),
    ("POST", _D + "/createSnapshot", "disks.createSnapshot"),
    ("POST", _D + "/setLabels", "disks.setLabels"),
    ("GET", _P + "/global/snapshots", "snapshots.list"),
    ("GET", _P + "/global/snapshots/(?P<name>[^/]+)", "snapshots.get"),
    ("DELETE", _P + "/global/snapshots/(?P<name>[^/]+)", "snapshots.delete"),
    ("GET", _Z + "/operations", "zoneOperations.list"),
    ("GET", _Z + "/operations/(?P<name>[^/]+)", "zoneOperations.get"),
    ("POST", _Z + "/operations/(?P<name>[^/]+)/wait", "zoneOperations.wait"),
    ("DELETE", _Z + "/operations/(?P<name>[^/]+)", "zoneOperations.delete"),
    ("GET", _P + "/global/operations", "globalOperations.list"),
    ("GET", _P + "/aggregated/operations", "globalOperations.aggregatedList"),
    ("GET", _P + "/global/operations/(?P<name>[^/]+)", "globalOperations.get"),
    ("POST", _P + "/global/operations/(?P<name>[^/]+)/wait", "globalOperations.wait"),
    ("POST", r"/token", "oauth.token"),
]]


# -- state -----------------------------------------------------------------------------------------------------
@dataclass
class _Op:
    resource: dict[str, Any]
    done_at: float | None = None  # monotonic time an artificially slow operation completes

    def view(self) -> dict[str, Any]:
        if self.resource["status"] != "DONE" and self.done_at is not None and time.monotonic() >= self.done_at:
            self.finish()
        return self.resource

    def finish(self) -> None:
        self.resource.update(status="DONE", progress=100, endTime=_now())


@dataclass
class _Vm:
    project: str
    zone: str
    name: str
    resource: dict[str, Any]
    vm_dir: Path
    metadata: _MetadataServer | None = None
    proc: subprocess.Popen[bytes] | None = None
    running_at: float = 0.0
    preempted: bool = False
    boots: int = 0

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.project, self.zone, self.name)

    @property
    def status(self) -> str:
        return self.resource["status"]

    @property
    def marker(self) -> str:
        return self.resource["id"]

    def item(self, key: str) -> str | None:
        for entry in self.resource["metadata"].get("items", []):
            if entry["key"] == key:
                return entry.get("value", "")
        return None


@dataclass
class _InsertFailure:
    reason: str
    zone: str | None
    machine_type: str | None
    times: int | None
    status: int | None


@dataclass
class _Key:
    email: str
    public_key: Any


@dataclass(frozen=True)
class _MdResult:
    status: int
    body: str
    content_type: str = "application/text"

    @property
    def etag(self) -> str:
        return hashlib.sha1(f"{self.status}:{self.body}".encode()).hexdigest()[:16]


# -- servers ------------------------------------------------------------------------------------------------------
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # long-polls are woken on close; never wait for a handler that is mid-request


class _JsonHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status, HTTP_REASONS.get(status))
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def read_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query, keep_blank_values=True).items()}


class _ApiHandler(_JsonHandler):
    fake: FakeGcp

    def _handle(self, method: str) -> None:
        status, text = self.fake._dispatch(method, urlsplit(self.path).path, self.query(), self.read_body(),
                                           dict(self.headers))
        self.send(status, text.encode(), "application/json; charset=UTF-8")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


class _MetadataHandler(_JsonHandler):
    fake: FakeGcp
    vm_key: tuple[str, str, str]

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/computeMetadata/") and self.headers.get("Metadata-Flavor") != "Google":
            self.send(403, b"Missing Metadata-Flavor:Google header.", "text/plain", {"Metadata-Flavor": "Google"})
            return
        result = self.fake._metadata_get(self.vm_key, path, self.query())
        self.send(result.status, result.body.encode(), result.content_type,
                  {"Metadata-Flavor": "Google", "ETag": result.etag})


class _MetadataServer:
    """One instance's metadata server (GCE_METADATA_HOST for its processes)."""

    def __init__(self, fake: FakeGcp, vm_key: tuple[str, str, str]) -> None:
        handler = type("Handler", (_MetadataHandler,), {"fake": fake, "vm_key": vm_key})
        self.httpd = _Server(("127.0.0.1", 0), handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": TICK},
                                       name=f"gce-metadata-{vm_key[2]}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


# -- the fake cloud -------------------------------------------------------------------------------------------------
class FakeGcp:
    """A Compute Engine REST API on 127.0.0.1 whose instances run their startup scripts as local processes.

    ``root`` holds ``vms/<name>/`` (``root/``, ``console.log``, shims), ``disks/<zone>/<disk>/`` and
    ``snapshots/<name>/``. Use as a context manager or call ``close()``.
    """

    def __init__(self, root: Path, *, gcs: FakeGcs | None = None, boot_seconds: float = 0.2,
                 operation_seconds: float = 0.0, project_number: str = "123456789012",
                 require_auth: bool = False, mounts: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        for sub in ("vms", "disks", "snapshots"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.gcs, self.boot_seconds, self.operation_seconds = gcs, boot_seconds, operation_seconds
        self.project_number, self.require_auth = project_number, require_auth
        self.mounts = dict(mounts if mounts is not None else {DATA_DEVICE: "data"})  # deviceName → path in root
        self.calls: Counter[str] = Counter()
        self.auth: Counter[str] = Counter()  # how API calls authenticated: anonymous / token / jwt
        self.errors: list[str] = []  # bugs in this fake (a response the real client could not parse)
        self._token = secrets.token_hex(6)  # this fake's processes carry FAKE_GCE_VM=<token>:<instance id>
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._random = random.Random()
        self._ids: set[str] = set()
        self._keys: dict[str, _Key] = {}
        self._tokens: dict[str, str] = {}
        self._closed = False
        self._retired: list[_MetadataServer] = []  # metadata servers to stop outside the lock
        self._clear_state()
        handler = type("Handler", (_ApiHandler,), {"fake": self})
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._api_thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": TICK},
                                            name="fake-gce-api", daemon=True)
        self._api_thread.start()
        self._stop = threading.Event()
        self._runner = threading.Thread(target=self._run, name="fake-gce-runner", daemon=True)
        self._runner.start()

    def _clear_state(self) -> None:
        self._vms: dict[tuple[str, str, str], _Vm] = {}
        self._disks: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._snapshots: dict[tuple[str, str], dict[str, Any]] = {}
        self._ops: dict[tuple[str, str], dict[str, _Op]] = {}  # (project, zone or "global") → name → op
        self._request_ids: dict[tuple[str, str], tuple[str, str, str]] = {}
        self._failures: list[_InsertFailure] = []
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._event_seq = itertools.count()
        self._pgids: set[int] = set()
        self._held_deletions: set[tuple[str, str, str]] = set()  # VMs whose delete waits for finish_deletion
        self._deleting: dict[tuple[str, str, str], list[_Op]] = {}  # held deletions in progress: their operations

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def __enter__(self) -> FakeGcp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill every VM process, stop every server. Idempotent."""
        if self._closed:
            return
        self._stop.set()
        self._runner.join(timeout=10)
        with self._changed:
            self._closed = True
            self._drop_everything()
            self._changed.notify_all()
        self._stop_retired()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._api_thread.join(timeout=5)

    def reset(self) -> None:
        """Forget all resources, operations, injected failures and counters (service-account keys stay valid)."""
        with self._changed:
            self._drop_everything()
            self._clear_state()
            self.calls.clear()
            self.auth.clear()
            for sub in ("vms", "disks", "snapshots"):
                shutil.rmtree(self.root / sub, ignore_errors=True)
                (self.root / sub).mkdir(parents=True)
            self._changed.notify_all()
        self._stop_retired()

    def _drop_everything(self) -> None:
        for vm in list(self._vms.values()):
            self._kill(vm)
            self._retire_metadata(vm)
        self._vms.clear()
        leftovers = self._scan(lambda marker, pgid: marker is not None and marker.startswith(self._token + ":"))
        self._signal_and_wait(leftovers)

    def _stop_retired(self) -> None:
        with self._lock:
            retired, self._retired = self._retired, []
        for server in retired:
            server.stop()

    # -- inspection --------------------------------------------------------------------------------------------
    def instance(self, project: str, zone: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            vm = self._vms.get((project, zone, name))
            return json.loads(json.dumps(vm.resource)) if vm else None

    def wait_status(self, project: str, zone: str, name: str, status: str | None,
                    timeout: float = 60.0) -> dict[str, Any] | None:
        """Wait until the instance has `status` (None: until it is gone); returns the instance."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                vm = self._vms.get((project, zone, name))
                if (vm is None and status is None) or (vm is not None and vm.status == status):
                    return self.instance(project, zone, name)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{name}: {vm.status if vm else 'gone'} after {timeout}s, wanted {status}")
                self._changed.wait(min(remaining, TICK))

    def vm_dir(self, name: str) -> Path:
        return self.root / "vms" / name

    def disk_dir(self, zone: str, name: str) -> Path:
        return self.root / "disks" / zone / name

    def console(self, name: str) -> str:
        path = self.vm_dir(name) / "console.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def metadata_host(self, project: str, zone: str, name: str) -> str:
        with self._lock:
            server = self._vms[(project, zone, name)].metadata
            assert server is not None
            return server.host

    def processes_alive(self) -> list[int]:
        """Pids of live processes started by any VM of this fake (including ones that left their group)."""
        with self._lock:
            pgids = set(self._pgids)
        found = self._scan(lambda marker, pgid: (marker or "").startswith(self._token + ":") or pgid in pgids)
        return sorted(proc.pid for proc in found)

    def client_options(self) -> Any:
        from google.api_core.client_options import ClientOptions

        return ClientOptions(api_endpoint=self.endpoint)

    # -- credentials -------------------------------------------------------------------------------------------
    def service_account_info(self, secret_marker: str | None = None, project: str = "test-project",
                             email: str | None = None) -> dict[str, str]:
        """A service-account key (a fresh RSA key) whose token_uri is this server's /token."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        key_id = secrets.token_hex(20) if secret_marker is None else f"{secret_marker}-{secrets.token_hex(8)}"
        email = email or f"spot-tests@{project}.iam.gserviceaccount.com"
        with self._lock:
            self._keys[key_id] = _Key(email, key.public_key())
        return {
            "type": "service_account", "project_id": project, "private_key_id": key_id, "private_key": pem,
            "client_email": email, "client_id": str(self._random.randrange(10**20, 10**21)),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": f"{self.endpoint}/token",
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{email}",
            "universe_domain": "googleapis.com",
        }

    def airflow_conn(self, conn_id: str, project: str, secret_marker: str | None = None) -> tuple[str, str]:
        """(`AIRFLOW_CONN_<ID>`, JSON) for a google_cloud_platform connection using a key from this fake."""
        info = self.service_account_info(secret_marker, project=project)
        value = {"conn_type": "google_cloud_platform",
                 "extra": {"keyfile_dict": json.dumps(info), "project": project}}
        return f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(value)

    def _issue_token(self, email: str) -> dict[str, Any]:
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        self._tokens[token] = email
        return {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}

    def _verify_jwt(self, token: str) -> dict[str, Any]:
        """Claims of a JWT signed by one of the keys this fake issued; ValueError otherwise."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        try:
            head, body, signature = token.split(".")
            header, claims = json.loads(_b64url_decode(head)), json.loads(_b64url_decode(body))
            key = self._keys[header["kid"]]
            key.public_key.verify(_b64url_decode(signature), f"{head}.{body}".encode(), padding.PKCS1v15(),
                                  hashes.SHA256())
        except (ValueError, KeyError, TypeError, binascii.Error, InvalidSignature) as err:
            raise ValueError(f"invalid JWT ({type(err).__name__})") from None
        if claims.get("iss") != key.email:
            raise ValueError("JWT issuer is not the key's service account")
        if float(claims.get("exp", 0)) < time.time():
            raise ValueError("JWT expired")
        return claims

    def _oauth_token(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        form = {k: v[-1] for k, v in parse_qs(raw.decode()).items()}
        if form.get("grant_type") != JWT_GRANT:
            return 400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type."}
        try:
            claims = self._verify_jwt(form.get("assertion", ""))
        except ValueError as err:
            return 400, {"error": "invalid_grant", "error_description": str(err)}
        return 200, self._issue_token(claims["iss"])

    def _authenticate(self, headers: dict[str, str]) -> str:
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
        if auth is None:
            if self.require_auth:
                raise ApiError(401, "required", "Login Required.")
            self.auth["anonymous"] += 1
            return "anonymous@example.com"
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token in self._tokens:
            self.auth["token"] += 1
            return self._tokens[token]
        try:
            claims = self._verify_jwt(token) if scheme.lower() == "bearer" else None
        except ValueError:
            claims = None
        if claims is None:
            raise ApiError(401, "authError", "Request had invalid authentication credentials. Expected OAuth 2 "
                                             "access token, login cookie or other valid authentication credential.")
        self.auth["jwt"] += 1  # a self-signed JWT: what compute_v1 sends for service-account keys
        return claims["iss"]

    # -- failure injection and chaos ---------------------------------------------------------------------------
    def fail_insert(self, reason: str, zone: str | None = None, machine_type: str | None = None,
                    times: int | None = None, status: int | None = None) -> None:
        """Make matching instances.insert calls fail. Reasons in OPERATION_ERRORS fail on the operation (as
        GCE reports capacity and quota); others (e.g. ``rateLimitExceeded``) fail the HTTP call with
        ``status`` (default from HTTP_ERRORS, else 400). ``times=None``: until reset."""
        with self._lock:
            self._failures.append(_InsertFailure(reason, zone, machine_type, times, status))

    def preempt(self, project: str, zone: str, name: str, notice_seconds: float | None = 2.0, *,
                soft_off: bool = True) -> dict[str, Any]:
        """Preempt a spot VM: `instance/preempted` turns TRUE (waking long-polls), status STOPPING and, with
        `soft_off`, SIGTERM to its processes (ACPI soft-off); after `notice_seconds` SIGKILL and TERMINATED,
        or deleted with instanceTerminationAction=DELETE. Returns the compute.instances.preempted operation.
        `notice_seconds=None`: killed at once, with no notice."""
        with self._changed:
            vm = self._vms.get((project, zone, name))
            if vm is None:
                raise ValueError(f"no instance {project}/{zone}/{name}")
            if not vm.resource["scheduling"].get("preemptible"):
                raise ValueError(f"{name} is not a spot/preemptible VM: GCE cannot preempt it (use lose())")
            if vm.status not in ("PROVISIONING", "STAGING", "RUNNING"):
                raise ValueError(f"{name} is {vm.status}: nothing to preempt")
            vm.preempted = True
            op = self._new_op(project, zone, "compute.instances.preempted", vm.resource["selfLink"],
                              vm.resource["id"], user="system", status="RUNNING",
                              statusMessage="Instance was preempted.")
            if notice_seconds is None:
                self._hard_off(vm, op)
            else:
                vm.resource["status"] = "STOPPING"
                if soft_off:
                    self._signal_and_wait(self._vm_processes(vm), signal.SIGTERM)
                self._schedule(notice_seconds, lambda: self._hard_off(vm, op))
            self._changed.notify_all()
            return json.loads(json.dumps(op.view()))

    def lose(self, project: str, zone: str, name: str, *, delete: bool = False,
             operation_type: str | None = None) -> None:
        """Host loss: processes SIGKILLed, instance TERMINATED (or gone with `delete`), no preempted operation.
        `operation_type` (e.g. ``compute.instances.hostError``) records that system event instead."""
        with self._changed:
            vm = self._vms.get((project, zone, name))
            if vm is None:
                raise ValueError(f"no instance {project}/{zone}/{name}")
            if operation_type:
                self._new_op(project, zone, operation_type, vm.resource["selfLink"], vm.resource["id"],
                             user="system", statusMessage="Instance terminated by Compute Engine.")
            if delete:
                self._delete_vm(vm)
            else:
                self._halt(vm)
            self._changed.notify_all()

    def hold_deletion(self, project: str, zone: str, name: str) -> None:
        """instances.delete of this VM leaves it ``STOPPING`` (processes killed, disks attached) with its delete
        operation ``RUNNING`` until :meth:`finish_deletion`: what GCE shows for the tens of seconds a delete
        takes. Changes to a VM being deleted are refused (``resourceNotReady``)."""
        with self._changed:
            if (project, zone, name) not in self._vms:
                raise ValueError(f"no instance {project}/{zone}/{name}")
            self._held_deletions.add((project, zone, name))

    def finish_deletion(self, project: str, zone: str, name: str) -> None:
        """End a held deletion: the VM goes, with its ``autoDelete`` disks; its delete operations are DONE."""
        with self._changed:
            key = (project, zone, name)
            self._held_deletions.discard(key)
            ops = self._deleting.pop(key, [])
            if ops and (vm := self._vms.get(key)) is not None:
                self._delete_vm(vm)
            for op in ops:
                op.finish()
            self._changed.notify_all()

    def _hard_off(self, vm: _Vm, op: _Op) -> None:
        op.finish()
        if self._vms.get(vm.key) is not vm:
            return  # deleted through the API during the notice
        if vm.resource["scheduling"].get("instanceTerminationAction") == "DELETE":
            self._delete_vm(vm)
        else:
            self._halt(vm)

    # -- processes ---------------------------------------------------------------------------------------------
    def _scan(self, match: Callable[[str | None, int], bool]) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter():
            if proc.pid == os.getpid():
                continue
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                marker, pgid = proc.environ().get(MARKER_ENV), os.getpgid(proc.pid)
            except (psutil.Error, OSError):
                continue  # gone meanwhile, or not ours to read
            if match(marker, pgid):
                found.append(proc)
        return found

    def _vm_processes(self, vm: _Vm) -> list[psutil.Process]:
        prefix = f"{self._token}:{vm.marker}:"
        pgid = vm.proc.pid if vm.proc is not None else None
        return self._scan(lambda marker, group: (marker or "").startswith(prefix) or group == pgid)

    @staticmethod
    def _signal_and_wait(procs: list[psutil.Process], sig: int = signal.SIGKILL) -> None:
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        deadline = time.monotonic() + 5
        while sig == signal.SIGKILL and procs and time.monotonic() < deadline:
            procs = [proc for proc in procs if _running(proc)]  # a zombie is dead: its reaper may be slow
            time.sleep(0.01)

    def _kill(self, vm: _Vm) -> None:
        """Hard power-off: SIGKILL the VM's process group and every process carrying its marker."""
        if vm.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(vm.proc.pid, signal.SIGKILL)
        self._signal_and_wait(self._vm_processes(vm))
        if vm.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                vm.proc.wait(timeout=5)
            vm.proc = None

    def _vm_env(self, vm: _Vm, shims: Path) -> dict[str, str]:
        root = vm.vm_dir / "root"
        assert vm.metadata is not None
        env = {
            "PATH": os.pathsep.join([str(shims), os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin",
                                     "/bin"]),
            "HOME": str(root), "SPOT_ROOT": str(root), "PYTHONUNBUFFERED": "1",
            "GCE_METADATA_HOST": vm.metadata.host, "GCE_METADATA_IP": vm.metadata.host,
            MARKER_ENV: f"{self._token}:{vm.marker}:{vm.boots}",
        }
        if self.gcs is not None:
            env.update(self.gcs.env())
        return env

    def _write_shims(self, vm: _Vm) -> Path:
        shims = vm.vm_dir / "bin"
        shims.mkdir(parents=True, exist_ok=True)
        request = shlex.quote(str(vm.vm_dir / "shutdown-requested"))
        for name in ("shutdown", "poweroff", "halt"):
            path = shims / name
            path.write_text(f'#!/bin/sh\n# Guest OS shutdown: the cloud powers the VM off.\necho "{name} $*" >> '
                            f"{request}\nexit 0\n")
            path.chmod(0o755)
        return shims

    def _start_script(self, vm: _Vm, script: str) -> None:
        shims = self._write_shims(vm)
        path = vm.vm_dir / "startup-script"
        path.write_text(script)
        with open(vm.vm_dir / "console.log", "ab") as log:
            log.write(f"fake-gce: boot {vm.boots}: running startup-script\n".encode())
            log.flush()
            vm.proc = subprocess.Popen(
                [shutil.which("bash") or "/bin/bash", str(path)], cwd=vm.vm_dir / "root", env=self._vm_env(vm, shims),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._pgids.add(vm.proc.pid)

    # -- runner ------------------------------------------------------------------------------------------------
    def _schedule(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (time.monotonic() + delay, next(self._event_seq), action))

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            with self._changed:
                self._tick()
            self._stop_retired()

    def _tick(self) -> None:
        now = time.monotonic()
        while self._events and self._events[0][0] <= now:
            heapq.heappop(self._events)[2]()
            self._changed.notify_all()
        for vm in list(self._vms.values()):
            if vm.status in ("PROVISIONING", "STAGING") and now >= vm.running_at:
                self._boot(vm)
            elif vm.status == "RUNNING" and (vm.vm_dir / "shutdown-requested").exists():
                self._halt(vm)  # the guest shut itself down
                self._changed.notify_all()
            if vm.proc is not None and vm.proc.poll() is not None:
                vm.proc = None  # the script ended (reaped); a VM keeps running without it
            self._mount(vm)

    def _boot(self, vm: _Vm) -> None:
        vm.boots += 1
        vm.preempted = False
        (vm.vm_dir / "root").mkdir(parents=True, exist_ok=True)
        (vm.vm_dir / "shutdown-requested").unlink(missing_ok=True)
        vm.resource.update(status="RUNNING", lastStartTimestamp=_now())
        self._mount(vm)
        script = vm.item("startup-script")
        if script:
            self._start_script(vm, script)
        self._changed.notify_all()

    def _halt(self, vm: _Vm) -> None:
        self._kill(vm)
        vm.resource.update(status="TERMINATED", lastStopTimestamp=_now())

    def _mount(self, vm: _Vm) -> None:
        """Keep `root/<mount>` symlinked to the disk attached under each mounted device name."""
        attached = {d.get("deviceName"): d["source"] for d in vm.resource.get("disks", [])}
        for device, relative in self.mounts.items():
            link = vm.vm_dir / "root" / relative
            source = attached.get(device)
            target = self._disk_dir_of(source) if source else None
            if target is None:
                if link.is_symlink():
                    link.unlink()
            elif not link.is_symlink() or Path(os.readlink(link)) != target:
                if link.is_symlink():
                    link.unlink()
                elif link.exists():
                    continue  # the guest made a real directory there: leave it
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(target, target_is_directory=True)

    def _disk_dir_of(self, source: str) -> Path | None:
        match = DISK_REF_RE.fullmatch(source)
        return self.disk_dir(match["zone"], match["name"]) if match else None

    def _retire_metadata(self, vm: _Vm) -> None:
        if vm.metadata is not None:
            self._retired.append(vm.metadata)
            vm.metadata = None

    # -- metadata server ---------------------------------------------------------------------------------------
    def _metadata_get(self, vm_key: tuple[str, str, str], path: str, query: dict[str, str]) -> _MdResult:
        prefix = "/computeMetadata/v1/"
        if path in ("", "/"):
            return _MdResult(200, "computeMetadata/\n")
        if not path.startswith(prefix):
            return _MdResult(404, "Not Found")
        relative = path[len(prefix):]
        with self._changed:
            result = self._metadata_value(vm_key, relative, query)
            if query.get("wait_for_change") != "true":
                return result
            last = query.get("last_etag")
            if last is not None and last != result.etag:
                return result  # changed since the caller's copy
            deadline = time.monotonic() + float(query.get("timeout_sec") or 300)
            start = result.etag
            while not self._closed and result.etag == start:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
                result = self._metadata_value(vm_key, relative, query)
            return result

    def _metadata_value(self, vm_key: tuple[str, str, str], relative: str, query: dict[str, str]) -> _MdResult:
        vm = self._vms.get(vm_key)
        if vm is None:
            return _MdResult(404, "Not Found")
        parts = [part for part in relative.split("/") if part]
        if len(parts) == 4 and parts[:2] == ["instance", "service-accounts"] and parts[3] == "token":
            accounts = self._metadata_tree(vm)["instance"]["service-accounts"]
            if parts[2] not in accounts:
                return _MdResult(404, "Not Found")
            return _MdResult(200, json.dumps(self._issue_token(accounts[parts[2]]["email"])), "application/json")
        node: Any = self._metadata_tree(vm)
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                return _MdResult(404, "Not Found")
            node = node[part]
        if isinstance(node, dict):
            if query.get("recursive") == "true" or query.get("alt") == "json":
                return _MdResult(200, json.dumps(_camel_keys(node, parts[-1:] == ["attributes"])), "application/json")
            return _MdResult(200, "".join(f"{k}/\n" if isinstance(v, dict) else f"{k}\n" for k, v in node.items()))
        if query.get("alt") == "json":
            return _MdResult(200, json.dumps(node), "application/json")
        return _MdResult(200, "\n".join(node) if isinstance(node, list) else str(node))

    def _metadata_tree(self, vm: _Vm) -> dict[str, Any]:
        res, number = vm.resource, self.project_number
        accounts: dict[str, Any] = {}
        for account in res.get("serviceAccounts", []):
            email = account.get("email") or f"{number}-compute@developer.gserviceaccount.com"
            entry = {"aliases": ["default"], "email": email, "scopes": account.get("scopes", [])}
            accounts.setdefault("default", entry)
            accounts[email] = {**entry, "aliases": []}
        machine_type = res["machineType"].rsplit("/", 1)[-1]
        sched = res["scheduling"]
        return {
            "instance": {
                "id": int(res["id"]), "name": vm.name, "zone": f"projects/{number}/zones/{vm.zone}",
                "hostname": f"{vm.name}.{vm.zone}.c.{vm.project}.internal",
                "machine-type": f"projects/{number}/machineTypes/{machine_type}",
                "preempted": "TRUE" if vm.preempted else "FALSE", "maintenance-event": "NONE",
                "attributes": {item["key"]: item.get("value", "") for item in res["metadata"].get("items", [])},
                "service-accounts": accounts, "description": res.get("description", ""),
                "scheduling": {"preemptible": "TRUE" if sched.get("preemptible") else "FALSE",
                               "automatic-restart": "TRUE" if sched.get("automaticRestart") else "FALSE",
                               "on-host-maintenance": sched.get("onHostMaintenance", "")},
            },
            "project": {"project-id": vm.project, "numeric-project-id": int(number), "attributes": {}},
        }

    # -- API dispatch ------------------------------------------------------------------------------------------
    def _dispatch(self, method: str, path: str, query: dict[str, str], raw: bytes,
                  headers: dict[str, str]) -> tuple[int, str]:
        route = next(((name, m) for verb, pattern, name in ROUTES
                      if verb == method and (m := pattern.fullmatch(path))), None)
        if route is None:
            error = ApiError(404, "notFound", f"{method} {path}: no such Compute Engine API method")
            return 404, json.dumps(error.body())
        name, match = route
        with self._changed:
            self.calls[name] += 1
            if name == "oauth.token":
                status, payload = self._oauth_token(raw)
                return status, json.dumps(payload)
            try:
                user = self._authenticate(headers)
                body = parse_message(REQUEST_TYPES[name], raw, name) if name in REQUEST_TYPES else {}
                text = json.dumps(self._call(name, match.groupdict(), query, body, user))  # a snapshot, under the lock
            except ApiError as err:
                return err.status, json.dumps(err.body())
            except Exception as err:  # noqa: BLE001 - a bug in this fake must reach the test (500 + errors), not hang it
                self.errors.append(f"{name}: {type(err).__name__}: {err}")
                return 500, json.dumps(ApiError(500, "internalError", f"fake bug: {err}").body())
            self._changed.notify_all()
        self._check_response(name, text)
        return 200, text

    def _call(self, name: str, args: dict[str, str], query: dict[str, str], body: dict[str, Any],
              user: str) -> dict[str, Any]:
        request_id = query.get("requestId")
        if request_id is not None:
            if not UUID_RE.fullmatch(request_id) or request_id == ZERO_UUID:
                raise _invalid("requestId", request_id, "The request id must be a valid UUID with the exception "
                                                        f"that zero UUID is not supported ({ZERO_UUID}).")
            seen = self._request_ids.get((args["project"], request_id.lower()))
            if seen is not None:  # the same request again: the same operation, nothing done twice
                return self._ops[seen[:2]][seen[2]].view()
        handler = getattr(self, "_api_" + name.replace(".", "_"))
        result = handler(args=args, query=query, body=body, user=user)
        if request_id is not None and result.get("kind") == "compute#operation":
            scope = result.get("zone", "").rsplit("/", 1)[-1] or "global"
            self._request_ids[(args["project"], request_id.lower())] = (args["project"], scope, result["name"])
        return result

    def _check_response(self, name: str, text: str) -> None:
        type_name = RESPONSE_TYPES.get(name, "Operation")
        if type_name is None:
            return
        from google.protobuf import json_format

        try:
            check_message(type_name, text)
        except json_format.ParseError as err:
            self.errors.append(f"{name}: response does not parse as {type_name}: {err}")

    # -- ids and links -----------------------------------------------------------------------------------------
    def _new_id(self) -> str:
        while True:
            value = str(self._random.randrange(10**18, 10**19))
            if value not in self._ids:
                self._ids.add(value)
                return value

    @staticmethod
    def _zone_url(project: str, zone: str) -> str:
        return f"{API_ROOT}projects/{project}/zones/{zone}"

    def _new_op(self, project: str, zone: str | None, op_type: str, target_link: str, target_id: str, *,
                user: str, status: str = "DONE", error: tuple[int, str, str, str] | None = None,
                **extra: Any) -> _Op:
        op_id = self._new_id()
        name = f"operation-{op_id}"
        scope_url = self._zone_url(project, zone) if zone else f"{API_ROOT}projects/{project}/global"
        now = _now()
        resource: dict[str, Any] = {
            "kind": "compute#operation", "id": op_id, "name": name, "operationType": op_type,
            "targetLink": target_link, "targetId": target_id, "status": "RUNNING", "user": user, "progress": 0,
            "insertTime": now, "startTime": now, "selfLink": f"{scope_url}/operations/{name}", **extra,
        }
        if zone:
            resource["zone"] = scope_url
        if error is not None:
            http_status, http_message, code, message = error
            resource.update(error={"errors": [{"code": code, "message": message}]}, httpErrorStatusCode=http_status,
                            httpErrorMessage=http_message)
        op = _Op(resource)
        if status == "DONE" and self.operation_seconds > 0:
            op.done_at = time.monotonic() + self.operation_seconds
        elif status == "DONE":
            op.finish()
        self._ops.setdefault((project, zone or "global"), {})[name] = op
        return op

    def _vm(self, args: dict[str, str]) -> _Vm:
        vm = self._vms.get((args["project"], args["zone"], args["name"]))
        if vm is None:
            raise _not_found(f"projects/{args['project']}/zones/{args['zone']}/instances/{args['name']}")
        return vm

    def _disk(self, project: str, zone: str, name: str) -> dict[str, Any]:
        disk = self._disks.get((project, zone, name))
        if disk is None:
            raise _not_found(f"projects/{project}/zones/{zone}/disks/{name}")
        return disk

    def _disk_by_ref(self, project: str, zone: str, ref: str, field_name: str) -> dict[str, Any]:
        match = DISK_REF_RE.fullmatch(ref)
        if not match:
            raise _invalid(field_name, ref, "Must be a URL to a disk (projects/P/zones/Z/disks/D).")
        return self._disk(match["project"] or project, match["zone"], match["name"])

    # -- validation --------------------------------------------------------------------------------------------
    @staticmethod
    def _check_name(name: str | None, field_name: str) -> str:
        if not name:
            raise ApiError(400, "required", f"Required field '{field_name}' not specified")
        if not NAME_RE.fullmatch(name):
            raise _invalid(field_name, name, "Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
        return name

    @staticmethod
    def _check_labels(labels: dict[str, str], field_name: str) -> dict[str, str]:
        if len(labels) > 64:
            raise _invalid(field_name, len(labels), "At most 64 labels are allowed.")
        for key, value in labels.items():
            if not LABEL_KEY_RE.fullmatch(key):
                raise _invalid(field_name, key, f"Label key '{key}' violates format constraints. The key must start "
                               "with a lowercase character, can only contain lowercase letters, numeric characters, "
                               "underscores and dashes, and at most 63 characters long.")
            if not LABEL_VALUE_RE.fullmatch(value):
                raise _invalid(field_name, value, f"Label value '{value}' violates format constraints. The value can "
                               "only contain lowercase letters, numeric characters, underscores and dashes, and at "
                               "most 63 characters long.")
        return dict(labels)

    @staticmethod
    def _check_metadata(metadata: dict[str, Any]) -> list[dict[str, str]]:
        items, seen = [], set()
        for item in metadata.get("items", []):
            key = item.get("key", "")
            if not METADATA_KEY_RE.fullmatch(key):
                raise _invalid("resource.metadata", key, "Metadata keys must match [a-zA-Z0-9-_]{1,128}.")
            if key in seen:
                raise _invalid("resource.metadata", key, "Duplicate metadata key.")
            if len(item.get("value", "").encode()) > 256 * 1024:
                raise _invalid("resource.metadata", key, "Metadata values are limited to 256 KB.")
            seen.add(key)
            items.append({"key": key, "value": item.get("value", "")})
        return items

    @staticmethod
    def _scheduling(given: dict[str, Any]) -> dict[str, Any]:
        sched = dict(given)
        model = sched.get("provisioningModel") or "STANDARD"
        if model not in ("SPOT", "STANDARD"):
            raise _invalid("resource.scheduling.provisioningModel", model, "Must be SPOT or STANDARD.")
        spot = model == "SPOT" or bool(sched.get("preemptible"))
        if spot:
            if sched.get("automaticRestart") is True:
                raise _invalid("resource.scheduling.automaticRestart", "true",
                               "Preemptible and Spot VMs cannot have automatic restart.")
            if sched.get("onHostMaintenance", "TERMINATE") != "TERMINATE":
                raise _invalid("resource.scheduling.onHostMaintenance", sched["onHostMaintenance"],
                               "Preemptible and Spot VMs must terminate on host maintenance.")
            sched.update(preemptible=True, automaticRestart=False, onHostMaintenance="TERMINATE")
        else:
            sched.setdefault("automaticRestart", True)
            sched.setdefault("onHostMaintenance", "MIGRATE")
            sched["preemptible"] = False
        action = sched.get("instanceTerminationAction")
        if model == "SPOT":
            sched["instanceTerminationAction"] = action or "STOP"
        if action is not None and action not in ("STOP", "DELETE"):
            raise _invalid("resource.scheduling.instanceTerminationAction", action, "Must be STOP or DELETE.")
        if action is not None and model != "SPOT" and "maxRunDuration" not in sched:
            raise _invalid("resource.scheduling.instanceTerminationAction", action,
                           "Termination action is only supported for Spot VMs or with maxRunDuration.")
        sched["provisioningModel"] = model
        return sched

    def _match_failure(self, zone: str, machine_type: str) -> _InsertFailure | None:
        for rule in self._failures:
            if rule.zone not in (None, zone) or rule.machine_type not in (None, machine_type):
                continue
            if rule.times is not None:
                if rule.times <= 0:
                    continue
                rule.times -= 1
            return rule
        return None

    # -- instances ---------------------------------------------------------------------------------------------
    def _api_instances_insert(self, args: dict[str, str], query: dict[str, str], body: dict[str, Any],
                              user: str) -> dict[str, Any]:
        project, zone = args["project"], args["zone"]
        name = self._check_name(body.get("name"), "resource.name")
        link = f"{self._zone_url(project, zone)}/instances/{name}"
        if (project, zone, name) in self._vms:
            raise ApiError(409, "alreadyExists", f"The resource 'projects/{project}/zones/{zone}/instances/{name}' "
                                                 "already exists")
        machine = MACHINE_TYPE_RE.fullmatch(body.get("machineType", ""))
        if not machine or machine["zone"] != zone:
            raise _invalid("resource.machineType", body.get("machineType", ""),
                           f"Must be a URL to a machine type in zone {zone} (zones/{zone}/machineTypes/TYPE).")
        failure = self._match_failure(zone, machine["type"])
        if failure is not None:
            return self._failed_insert(failure, project, zone, link, user)
        scheduling = self._scheduling(body.get("scheduling", {}))
        labels = self._check_labels(body.get("labels", {}), "resource.labels")
        items = self._check_metadata(body.get("metadata", {}))
        instance_id = self._new_id()
        attachments = self._plan_disks(project, zone, name, body.get("disks", []))
        resource = {
            **body, "kind": "compute#instance", "id": instance_id, "name": name, "creationTimestamp": _now(),
            "zone": self._zone_url(project, zone), "machineType": f"{self._zone_url(project, zone)}/machineTypes/"
            f"{machine['type']}", "status": "PROVISIONING", "scheduling": scheduling, "labelFingerprint":
            _fingerprint(), "metadata": {"kind": "compute#metadata", "fingerprint": _fingerprint(), "items": items},
            "networkInterfaces": self._nics(project, body.get("networkInterfaces", [])), "selfLink": link,
            "cpuPlatform": "Intel Cascade Lake", "fingerprint": _fingerprint(), "startRestricted": False,
            "deletionProtection": bool(body.get("deletionProtection", False)),
        }
        resource["labels"] = labels
        if not labels:
            del resource["labels"]
        resource["disks"] = [self._attach(project, zone, link, plan) for plan in attachments]
        vm_dir = self.vm_dir(name)
        if not any(other.vm_dir == vm_dir for other in self._vms.values()):
            shutil.rmtree(vm_dir, ignore_errors=True)  # a new VM with an old name gets a fresh root
        vm = _Vm(project, zone, name, resource, vm_dir, running_at=time.monotonic() + self.boot_seconds)
        vm_dir.mkdir(parents=True, exist_ok=True)
        vm.metadata = _MetadataServer(self, vm.key)
        self._vms[vm.key] = vm
        return self._new_op(project, zone, "insert", link, instance_id, user=user).view()

    def _failed_insert(self, rule: _InsertFailure, project: str, zone: str, link: str,
                       user: str) -> dict[str, Any]:
        if rule.reason in OPERATION_ERRORS:
            status, http_message, template = OPERATION_ERRORS[rule.reason]
            message = template.format(project=project, zone=zone, region=zone.rsplit("-", 1)[0])
            return self._new_op(project, zone, "insert", link, self._new_id(), user=user,
                                error=(status, http_message, rule.reason, message)).view()
        status, message = HTTP_ERRORS.get(rule.reason, (400, rule.reason))
        raise ApiError(rule.status or status, rule.reason, message)

    def _nics(self, project: str, given: list[dict[str, Any]]) -> list[dict[str, Any]]:
        nics = []
        for index, nic in enumerate(given):
            nics.append({**nic, "kind": "compute#networkInterface", "name": f"nic{index}",
                         "network": nic.get("network") or f"{API_ROOT}projects/{project}/global/networks/default",
                         "networkIP": f"10.128.{self._random.randrange(256)}.{self._random.randrange(2, 255)}",
                         "fingerprint": _fingerprint(), "stackType": nic.get("stackType", "IPV4_ONLY")})
        return nics

    def _plan_disks(self, project: str, zone: str, name: str, given: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Validate every disk before anything is created: insert is all or nothing."""
        plans, boots, new_names = [], 0, set()
        for index, spec in enumerate(given):
            boot = bool(spec.get("boot"))
            boots += boot
            if "initializeParams" in spec:
                params = spec["initializeParams"]
                disk_name = params.get("diskName") or (name if boot else f"{name}-disk-{index}")
                self._check_name(disk_name, f"resource.disks[{index}].initializeParams.diskName")
                if (project, zone, disk_name) in self._disks or disk_name in new_names:
                    raise ApiError(409, "alreadyExists", f"The resource 'projects/{project}/zones/{zone}/disks/"
                                                         f"{disk_name}' already exists")
                if boot and not (params.get("sourceImage") or params.get("sourceSnapshot")):
                    raise ApiError(400, "required", f"Required field 'resource.disks[{index}].initializeParams."
                                                    "sourceImage' not specified")
                self._check_labels(params.get("labels", {}), f"resource.disks[{index}].initializeParams.labels")
                new_names.add(disk_name)
                plans.append({"spec": spec, "index": index, "create": disk_name})
            elif "source" in spec:
                disk = self._disk_by_ref(project, zone, spec["source"], f"resource.disks[{index}].source")
                self._check_free(disk, spec.get("mode", "READ_WRITE"))
                plans.append({"spec": spec, "index": index, "disk": disk})
            else:
                raise ApiError(400, "required", f"Required field 'resource.disks[{index}].source' not specified")
        if boots != 1:
            raise _invalid("resource.disks", boots, "An instance must have exactly one boot disk.")
        return plans

    def _check_free(self, disk: dict[str, Any], mode: str) -> None:
        if mode == "READ_WRITE" and disk.get("users"):
            raise ApiError(400, "resourceInUseByAnotherResource", f"The disk resource '{_partial(disk['selfLink'])}' "
                                                                  f"is already being used by "
                                                                  f"'{_partial(disk['users'][0])}'")

    def _attach(self, project: str, zone: str, instance_link: str, plan: dict[str, Any]) -> dict[str, Any]:
        spec = plan["spec"]
        if "create" in plan:
            params = spec["initializeParams"]
            disk = self._create_disk(project, zone, {
                "name": plan["create"], "sizeGb": params.get("diskSizeGb", "10"),
                "type": params.get("diskType", "pd-balanced"), "labels": params.get("labels", {}),
                **{k: params[k] for k in ("sourceImage", "sourceSnapshot", "description") if k in params}})
        else:
            disk = plan["disk"]
        disk.setdefault("users", []).append(instance_link)
        disk["lastAttachTimestamp"] = _now()
        attached = {k: v for k, v in spec.items() if k != "initializeParams"}
        attached.update(kind="compute#attachedDisk", type=spec.get("type", "PERSISTENT"),
                        mode=spec.get("mode", "READ_WRITE"), source=disk["selfLink"], index=plan["index"],
                        boot=bool(spec.get("boot")), autoDelete=bool(spec.get("autoDelete", False)),
                        interface=spec.get("interface", "SCSI"), diskSizeGb=disk["sizeGb"],
                        deviceName=spec.get("deviceName") or f"persistent-disk-{plan['index']}")
        return attached

    def _api_instances_get(self, args: dict[str, str], **_: Any) -> dict[str, Any]:
        return self._vm(args).resource

    def _list(self, resources: list[dict[str, Any]], query: dict[str, str], kind: str,
              self_link: str) -> dict[str, Any]:
        try:
            predicate = compile_filter(query.get("filter", ""))
        except FilterError as err:
            raise _invalid("filter", query.get("filter"), f"Invalid list filter expression: {err}") from None
        items = [r for r in resources if predicate(r)]
        start = int(query.get("pageToken") or 0)
        size = int(query.get("maxResults") or 500)
        result: dict[str, Any] = {"kind": kind, "id": self_link.removeprefix(API_ROOT),
                                  "items": items[start:start + size], "selfLink": self_link}
        if start + size < len(items):
            result["nextPageToken"] = str(start + size)
        return result

    def _api_instances_list(self, args: dict[str, str], query: dict[str, str], **_: Any) -> dict[str, Any]:
        project, zone = args["project"], args["zone"]
        items = [vm.resource for vm in self._vms.values() if (vm.project, vm.zone) == (project, zone)]
        return self._list(items, query, "compute#instanceList", f"{self._zone_url(project, zone)}/instances")

    def _aggregated(self, project: str, query: dict[str, str], kind: str, key: str,
                    scoped: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        result: dict[str, Any] = {"kind": kind, "id": f"projects/{project}/aggregated/{key}", "items": {},
                                  "selfLink": f"{API_ROOT}projects/{project}/aggregated/{key}"}
        for scope, resources in sorted(scoped.items()):
            listed = self._list(resources, {"filter": query.get("filter", "")}, kind, result["selfLink"])
            if listed["items"]:
                result["items"][scope] = {key: listed["items"]}
        return result

    def _api_instances_aggregatedList(self, args: dict[str, str], query: dict[str, str],
                                      **_: Any) -> dict[str, Any]:
        scoped: dict[str, list[dict[str, Any]]] = {}
        for vm in self._vms.values():
            if vm.project == args["project"]:
                scoped.setdefault(f"zones/{vm.zone}", []).append(vm.resource)
        return self._aggregated(args["project"], query, "compute#instanceAggregatedList", "instances", scoped)

    def _api_instances_delete(self, args: dict[str, str], user: str, **_: Any) -> dict[str, Any]:
        vm = self._vm(args)
        link, target_id = vm.resource["selfLink"], vm.resource["id"]
        if vm.key in self._held_deletions:  # torn down, but on record until finish_deletion
            if vm.key not in self._deleting:
                vm.resource["status"] = "STOPPING"
                self._kill(vm)
            op = self._new_op(vm.project, vm.zone, "delete", link, target_id, user=user, status="RUNNING")
            self._deleting.setdefault(vm.key, []).append(op)
            return op.view()
        self._delete_vm(vm)
        return self._new_op(vm.project, vm.zone, "delete", link, target_id, user=user).view()

    def _not_deleting(self, vm: _Vm) -> _Vm:
        if vm.key in self._deleting:
            raise ApiError(400, "resourceNotReady", f"The resource '{_partial(vm.resource['selfLink'])}' is not "
                                                    "ready")
        return vm

    def _delete_vm(self, vm: _Vm) -> None:
        self._kill(vm)
        self._retire_metadata(vm)
        for attached in vm.resource.get("disks", []):
            disk = self._disk_by_ref(vm.project, vm.zone, attached["source"], "disks.source")
            self._release(disk, vm.resource["selfLink"])
            if attached.get("autoDelete"):
                self._drop_disk(disk)
        del self._vms[vm.key]
        for relative in self.mounts.values():
            link = vm.vm_dir / "root" / relative
            if link.is_symlink():
                link.unlink()

    def _api_instances_start(self, args: dict[str, str], user: str, **_: Any) -> dict[str, Any]:
        vm = self._vm(args)
        if vm.status == "TERMINATED":
            vm.resource["status"] = "PROVISIONING"
            vm.running_at = time.monotonic() + self.boot_seconds
        elif vm.status == "STOPPING":
            raise ApiError(400, "resourceNotReady", f"The resource '{_partial(vm.resource['selfLink'])}' is not "
                                                    "ready")
        return self._new_op(vm.project, vm.zone, "start", vm.resource["selfLink"], vm.resource["id"],
                            user=user).view()

    def _api_instances_stop(self, args: dict[str, str], user: str, **_: Any) -> dict[str, Any]:
        vm = self._not_deleting(self._vm(args))
        if vm.status != "TERMINATED":
            vm.resource["status"] = "STOPPING"
            self._halt(vm)  # the operation is DONE once the instance is TERMINATED, as on GCE
        return self._new_op(vm.project, vm.zone, "stop", vm.resource["selfLink"], vm.resource["id"],
                            user=user).view()

    def _api_instances_attachDisk(self, args: dict[str, str], body: dict[str, Any], user: str,
                                  **_: Any) -> dict[str, Any]:
        vm = self._not_deleting(self._vm(args))
        if "source" not in body:
            raise ApiError(400, "required", "Required field 'resource.source' not specified")
        disk = self._disk_by_ref(vm.project, vm.zone, body["source"], "resource.source")
        if vm.resource["selfLink"] in disk.get("users", []):
            raise _invalid("resource.source", body["source"], "The disk is already attached to this instance.")
        device = body.get("deviceName") or disk["name"]
        if any(d.get("deviceName") == device for d in vm.resource["disks"]):
            raise _invalid("resource.deviceName", device, "Device name is already in use on this instance.")
        self._check_free(disk, body.get("mode", "READ_WRITE"))
        index = max(d["index"] for d in vm.resource["disks"]) + 1
        spec = {**body, "deviceName": device, "boot": False}
        vm.resource["disks"].append(self._attach(vm.project, vm.zone, vm.resource["selfLink"],
                                                 {"spec": spec, "index": index, "disk": disk}))
        self._mount(vm)
        return self._new_op(vm.project, vm.zone, "attachDisk", vm.resource["selfLink"], vm.resource["id"],
                            user=user).view()

    def _api_instances_detachDisk(self, args: dict[str, str], query: dict[str, str], user: str,
                                  **_: Any) -> dict[str, Any]:
        vm = self._not_deleting(self._vm(args))
        device = query.get("deviceName")
        if not device:
            raise ApiError(400, "required", "Required field 'deviceName' not specified")
        attached = next((d for d in vm.resource["disks"] if d.get("deviceName") == device), None)
        if attached is None:
            raise _invalid("deviceName", device, f"No attached disk found with device name '{device}'")
        if attached.get("boot") and vm.status not in ("TERMINATED",):
            raise _invalid("deviceName", device, "The boot disk of a running instance cannot be detached.")
        vm.resource["disks"].remove(attached)
        self._release(self._disk_by_ref(vm.project, vm.zone, attached["source"], "source"), vm.resource["selfLink"])
        self._mount(vm)
        return self._new_op(vm.project, vm.zone, "detachDisk", vm.resource["selfLink"], vm.resource["id"],
                            user=user).view()

    def _api_instances_setDiskAutoDelete(self, args: dict[str, str], query: dict[str, str], user: str,
                                         **_: Any) -> dict[str, Any]:
        """Both query parameters are required (the client always sends them); autoDelete is a JSON boolean."""
        vm = self._vm(args)
        for field_name in ("autoDelete", "deviceName"):
            if not query.get(field_name):
                raise ApiError(400, "required", f"Required field '{field_name}' not specified")
        flag, device = query["autoDelete"], query["deviceName"]
        if flag not in ("true", "false"):
            raise _invalid("autoDelete", flag, "Must be a boolean (true or false).")
        attached = next((d for d in vm.resource["disks"] if d.get("deviceName") == device), None)
        if attached is None:
            raise _invalid("deviceName", device, f"No attached disk found with device name '{device}'")
        if vm.status == "STOPPING":  # being stopped (a preemption) or deleted
            raise ApiError(400, "resourceNotReady", f"The resource '{_partial(vm.resource['selfLink'])}' is not "
                                                    "ready")
        attached["autoDelete"] = flag == "true"
        return self._new_op(vm.project, vm.zone, "setDiskAutoDelete", vm.resource["selfLink"], vm.resource["id"],
                            user=user).view()

    def _release(self, disk: dict[str, Any], instance_link: str) -> None:
        users = [u for u in disk.get("users", []) if u != instance_link]
        if users:
            disk["users"] = users
        else:
            disk.pop("users", None)
        disk["lastDetachTimestamp"] = _now()

    def _api_instances_setLabels(self, args: dict[str, str], body: dict[str, Any], user: str,
                                 **_: Any) -> dict[str, Any]:
        vm = self._vm(args)
        self._set_labels(vm.resource, body, "labels")
        return self._new_op(vm.project, vm.zone, "setLabels", vm.resource["selfLink"], vm.resource["id"],
                            user=user).view()

    def _set_labels(self, resource: dict[str, Any], body: dict[str, Any], field_name: str) -> None:
        if body.get("labelFingerprint") != resource["labelFingerprint"]:
            raise ApiError(412, "conditionNotMet", "Labels fingerprint either invalid or resource labels have "
                                                   "changed")
        labels = self._check_labels(body.get("labels", {}), field_name)
        resource["labels"] = labels
        if not labels:
            del resource["labels"]
        resource["labelFingerprint"] = _fingerprint()

    def _api_instances_setMetadata(self, args: dict[str, str], body: dict[str, Any], user: str,
                                   **_: Any) -> dict[str, Any]:
        vm = self._vm(args)
        if body.get("fingerprint") != vm.resource["metadata"]["fingerprint"]:
            raise ApiError(412, "conditionNotMet", "Supplied fingerprint does not match current metadata "
                                                   "fingerprint.")
        vm.resource["metadata"] = {"kind": "compute#metadata", "fingerprint": _fingerprint(),
                                   "items": self._check_metadata(body)}
        return self._new_op(vm.project, vm.zone, "setMetadata", vm.resource["selfLink"], vm.resource["id"],
                            user=user).view()

    def _api_instances_getSerialPortOutput(self, args: dict[str, str], query: dict[str, str],
                                           **_: Any) -> dict[str, Any]:
        vm = self._vm(args)
        data = (vm.vm_dir / "console.log").read_bytes() if (vm.vm_dir / "console.log").exists() else b""
        start = min(int(query.get("start") or 0), len(data))
        return {"kind": "compute#serialPortOutput", "contents": data[start:].decode(errors="replace"),
                "start": str(start), "next": str(len(data)), "selfLink": f"{vm.resource['selfLink']}/serialPort"}

    # -- disks and snapshots -----------------------------------------------------------------------------------
    def _create_disk(self, project: str, zone: str, spec: dict[str, Any]) -> dict[str, Any]:
        name = spec["name"]
        disk_type = spec.get("type") or "pd-balanced"
        if "/" not in disk_type:
            disk_type = f"{self._zone_url(project, zone)}/diskTypes/{disk_type}"
        disk = {**spec, "kind": "compute#disk", "id": self._new_id(), "name": name, "creationTimestamp": _now(),
                "zone": self._zone_url(project, zone), "status": "READY", "sizeGb": str(spec.get("sizeGb") or "10"),
                "type": disk_type, "labelFingerprint": _fingerprint(), "physicalBlockSizeBytes": "4096",
                "selfLink": f"{self._zone_url(project, zone)}/disks/{name}"}
        if not disk.get("labels"):
            disk.pop("labels", None)
        path = self.disk_dir(zone, name)
        shutil.rmtree(path, ignore_errors=True)
        if spec.get("sourceSnapshot"):
            snapshot = self._snapshot_by_ref(project, spec["sourceSnapshot"])
            shutil.copytree(self.root / "snapshots" / snapshot["name"], path, symlinks=True)
            disk["sourceSnapshotId"] = snapshot["id"]
        else:
            path.mkdir(parents=True)
        self._disks[(project, zone, name)] = disk
        return disk

    def _drop_disk(self, disk: dict[str, Any]) -> None:
        zone = disk["zone"].rsplit("/", 1)[-1]
        project = _partial(disk["selfLink"]).split("/")[1]
        del self._disks[(project, zone, disk["name"])]
        shutil.rmtree(self.disk_dir(zone, disk["name"]), ignore_errors=True)

    def _api_disks_insert(self, args: dict[str, str], body: dict[str, Any], user: str, **_: Any) -> dict[str, Any]:
        project, zone = args["project"], args["zone"]
        name = self._check_name(body.get("name"), "resource.name")
        if (project, zone, name) in self._disks:
            raise ApiError(409, "alreadyExists", f"The resource 'projects/{project}/zones/{zone}/disks/{name}' "
                                                 "already exists")
        self._check_labels(body.get("labels", {}), "resource.labels")
        disk = self._create_disk(project, zone, body)
        return self._new_op(project, zone, "insert", disk["selfLink"], disk["id"], user=user).view()

    def _api_disks_get(self, args: dict[str, str], **_: Any) -> dict[str, Any]:
        return self._disk(args["project"], args["zone"], args["name"])

    def _api_disks_list(self, args: dict[str, str], query: dict[str, str], **_: Any) -> dict[str, Any]:
        project, zone = args["project"], args["zone"]
        items = [d for (p, z, _n), d in self._disks.items() if (p, z) == (project, zone)]
        return self._list(items, query, "compute#diskList", f"{self._zone_url(project, zone)}/disks")

    def _api_disks_aggregatedList(self, args: dict[str, str], query: dict[str, str],
                                  **_: Any) -> dict[str, Any]:
        scoped: dict[str, list[dict[str, Any]]] = {}
        for (project, zone, _name), disk in self._disks.items():
            if project == args["project"]:
                scoped.setdefault(f"zones/{zone}", []).append(disk)
        return self._aggregated(args["project"], query, "compute#diskAggregatedList", "disks", scoped)

    def _api_disks_delete(self, args: dict[str, str], user: str, **_: Any) -> dict[str, Any]:
        disk = self._disk(args["project"], args["zone"], args["name"])
        if disk.get("users"):
            raise ApiError(400, "resourceInUseByAnotherResource", f"The disk resource '{_partial(disk['selfLink'])}' "
                                                                  f"is already being used by "
                                                                  f"'{_partial(disk['users'][0])}'")
        self._drop_disk(disk)
        return self._new_op(args["project"], args["zone"], "delete", disk["selfLink"], disk["id"], user=user).view()

    def _api_disks_setLabels(self, args: dict[str, str], body: dict[str, Any], user: str,
                             **_: Any) -> dict[str, Any]:
        disk = self._disk(args["project"], args["zone"], args["name"])
        self._set_labels(disk, body, "labels")
        return self._new_op(args["project"], args["zone"], "setLabels", disk["selfLink"], disk["id"],
                            user=user).view()

    def _api_disks_createSnapshot(self, args: dict[str, str], body: dict[str, Any], user: str,
                                  **_: Any) -> dict[str, Any]:
        project, zone = args["project"], args["zone"]
        disk = self._disk(project, zone, args["name"])
        name = self._check_name(body.get("name"), "resource.name")
        if (project, name) in self._snapshots:
            raise ApiError(409, "alreadyExists", f"The resource 'projects/{project}/global/snapshots/{name}' "
                                                 "already exists")
        self._check_labels(body.get("labels", {}), "resource.labels")
        target = self.root / "snapshots" / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.disk_dir(zone, disk["name"]), target, symlinks=True)
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        snapshot = {**body, "kind": "compute#snapshot", "id": self._new_id(), "name": name,
                    "creationTimestamp": _now(), "sourceDisk": disk["selfLink"], "sourceDiskId": disk["id"],
                    "diskSizeGb": disk["sizeGb"], "status": "READY", "storageBytes": str(size),
                    "labelFingerprint": _fingerprint(), "selfLink": f"{API_ROOT}projects/{project}/global/snapshots/"
                    f"{name}"}
        if not snapshot.get("labels"):
            snapshot.pop("labels", None)
        self._snapshots[(project, name)] = snapshot
        return self._new_op(project, zone, "createSnapshot", disk["selfLink"], disk["id"], user=user).view()

    def _snapshot_by_ref(self, project: str, ref: str) -> dict[str, Any]:
        match = SNAPSHOT_REF_RE.fullmatch(ref)
        if not match:
            raise _invalid("sourceSnapshot", ref, "Must be a URL to a snapshot (global/snapshots/NAME).")
        snapshot = self._snapshots.get((match["project"] or project, match["name"]))
        if snapshot is None:
            raise _not_found(f"projects/{match['project'] or project}/global/snapshots/{match['name']}")
        return snapshot

    def _api_snapshots_get(self, args: dict[str, str], **_: Any) -> dict[str, Any]:
        return self._snapshot_by_ref(args["project"], f"global/snapshots/{args['name']}")

    def _api_snapshots_list(self, args: dict[str, str], query: dict[str, str], **_: Any) -> dict[str, Any]:
        items = [s for (p, _n), s in self._snapshots.items() if p == args["project"]]
        return self._list(items, query, "compute#snapshotList", f"{API_ROOT}projects/{args['project']}/global/"
                                                                "snapshots")

    def _api_snapshots_delete(self, args: dict[str, str], user: str, **_: Any) -> dict[str, Any]:
        snapshot = self._snapshot_by_ref(args["project"], f"global/snapshots/{args['name']}")
        del self._snapshots[(args["project"], snapshot["name"])]
        shutil.rmtree(self.root / "snapshots" / snapshot["name"], ignore_errors=True)
        return self._new_op(args["project"], None, "delete", snapshot["selfLink"], snapshot["id"], user=user).view()

    # -- operations --------------------------------------------------------------------------------------------
    def _op(self, project: str, scope: str, name: str) -> _Op:
        op = self._ops.get((project, scope), {}).get(name)
        if op is None:
            where = f"zones/{scope}" if scope != "global" else "global"
            raise _not_found(f"projects/{project}/{where}/operations/{name}")
        return op

    def _wait_op(self, op: _Op) -> dict[str, Any]:
        deadline = time.monotonic() + 30  # the real wait returns after at most ~2 minutes, DONE or not
        while op.view()["status"] != "DONE" and not self._closed and time.monotonic() < deadline:
            self._changed.wait(TICK)
        return op.view()

    def _api_zoneOperations_get(self, args: dict[str, str], **_: Any) -> dict[str, Any]:
        return self._op(args["project"], args["zone"], args["name"]).view()

    def _api_zoneOperations_wait(self, args: dict[str, str], **_: Any) -> dict[str, Any]:
        return self._wait_op(self._op(args["project"], args["zone"], args["name"]))

    def _api_zoneOperations_delete(self, args: dict[str, str], **_: Any) -> dict[str, Any]:
        self._op(args["project"], args["zone"], args["name"])
        del self._ops[(args["project"], args["zone"])][args["name"]]
        return {}

    def _api_zoneOperations_list(self, args: dict[str, str], query: dict[str, str],
                                 **_: Any) -> dict[str, Any]:
        project, zone = args["project"], args["zone"]
        items = [op.view() for op in self._ops.get((project, zone), {}).values()]
        return self._list(items, query, "compute#operationList", f"{self._zone_url(project, zone)}/operations")

    def _api_globalOperations_get(self, args: dict[str, str], **_: Any) -> dict[str, Any]:
        return self._op(args["project"], "global", args["name"]).view()

    def _api_globalOperations_wait(self, args: dict[str, str], **_: Any) -> dict[str, Any]:
        return self._wait_op(self._op(args["project"], "global", args["name"]))

    def _api_globalOperations_list(self, args: dict[str, str], query: dict[str, str],
                                   **_: Any) -> dict[str, Any]:
        items = [op.view() for op in self._ops.get((args["project"], "global"), {}).values()]
        return self._list(items, query, "compute#operationList", f"{API_ROOT}projects/{args['project']}/global/"
                                                                 "operations")

    def _api_globalOperations_aggregatedList(self, args: dict[str, str], query: dict[str, str],
                                             **_: Any) -> dict[str, Any]:
        scoped = {("global" if scope == "global" else f"zones/{scope}"): [op.view() for op in ops.values()]
                  for (project, scope), ops in self._ops.items() if project == args["project"]}
        return self._aggregated(args["project"], query, "compute#operationAggregatedList", "operations", scoped)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _partial(url: str) -> str:
    """`projects/...` part of a resource URL, as the API quotes resources in messages."""
    return url[url.index("projects/"):] if "projects/" in url else url


def _camel_keys(node: Any, keep: bool = False) -> Any:
    """Recursive metadata JSON uses camelCase keys (`machine-type` → `machineType`), except user attributes."""
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        name = key if keep else re.sub(r"-([a-z])", lambda m: m.group(1).upper(), key)
        out[name] = _camel_keys(value, keep=key == "attributes")
    return out


# -- GCS ---------------------------------------------------------------------------------------------------------
# The emulator with objects.move (`.../o/SRC/moveTo/o/DST`) added: gcsfs's mv() tries it first, and the emulator's
# 501 for it costs ~35 s of gcsfs retries per file before the copy/delete fallback.
_EMULATOR_MAIN = r"""
import sys
from gcp_storage_emulator import __main__ as cli, server, settings
from gcp_storage_emulator.handlers import objects


def move(request, response, storage, *args, **kwargs):
    params = request.params
    params["dest_bucket_name"] = params["bucket_name"]
    objects.copy(request, response, storage)
    if response.status == 200:
        objects._delete(storage, params["bucket_name"], params["object_id"])


MOVE = r"/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/(?P<dest_object_id>.*[^/]+)$"
server.HANDLERS = tuple((f"^{prefix}{MOVE}", {server.POST: move}) for prefix in (settings.API_ENDPOINT, "")) \
    + server.HANDLERS
cli.main(sys.argv[1:])
"""


class FakeGcs:
    """The `gcp-storage-emulator` package as a subprocess on 127.0.0.1; data kept under `data_dir`."""

    def __init__(self, data_dir: Path, project: str = "test-project", start_timeout: float = 20.0) -> None:
        self.data_dir, self.project = Path(data_dir), project
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        for _ in range(3):  # the free port can be taken between choosing and binding it
            if self._start(free_port(), start_timeout):
                return
        raise RuntimeError(f"gcp-storage-emulator did not start: {self.log()[-2000:]}")

    def _start(self, port: int, timeout: float) -> bool:
        with open(self.data_dir.parent / f"{self.data_dir.name}.emulator.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _EMULATOR_MAIN, "-d", str(self.data_dir), "start", "-H", "127.0.0.1",
                 "--port", str(port), "-q"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b?project={self.project}", timeout=1):
                    return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        self.close()
        return False

    def log(self) -> str:
        path = self.data_dir.parent / f"{self.data_dir.name}.emulator.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.url, **GCSFS_PLAIN}

    def create_bucket(self, name: str) -> None:
        request = urllib.request.Request(f"{self.url}/storage/v1/b?project={self.project}", method="POST",
                                         data=json.dumps({"name": name}).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except urllib.error.HTTPError as err:
            if err.code != 409:  # already there is fine
                raise

    def close(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> FakeGcs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

