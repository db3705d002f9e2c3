"""The Compute REST API on 127.0.0.1: routes, authentication, and the wire format checked against the real
client's ``compute_v1`` protos (an unknown field in a request is a 400; a response the client could not parse
is a bug of the fake, kept in ``errors``). Also the OAuth ``/token`` endpoint of the fake's service accounts."""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..fake_cloud import LocalServer, QuietHandler
from .auth import Auth
from .compute import Compute
from .errors import ApiError

# Request bodies, by method; responses default to Operation.
REQUEST_TYPES = {"instances.insert": "Instance", "instances.attachDisk": "AttachedDisk",
                 "instances.setLabels": "InstancesSetLabelsRequest"}
RESPONSE_TYPES = {"instances.get": "Instance", "instances.list": "InstanceList",
                  "instances.aggregatedList": "InstanceAggregatedList",
                  "instances.getSerialPortOutput": "SerialPortOutput", "disks.get": "Disk", "disks.list": "DiskList",
                  "disks.aggregatedList": "DiskAggregatedList", "zoneOperations.list": "OperationList",
                  "globalOperations.aggregatedList": "OperationAggregatedList"}

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
    ("POST", _I + "/setDiskAutoDelete", "instances.setDiskAutoDelete"),
    ("GET", _I + "/serialPort", "instances.getSerialPortOutput"),
    ("GET", _Z + "/disks", "disks.list"),
    ("GET", _P + "/aggregated/disks", "disks.aggregatedList"),
    ("GET", _D, "disks.get"),
    ("DELETE", _D, "disks.delete"),
    ("GET", _Z + "/operations", "zoneOperations.list"),
    ("GET", _Z + "/operations/(?P<name>[^/]+)", "zoneOperations.get"),
    ("POST", _Z + "/operations/(?P<name>[^/]+)/wait", "zoneOperations.wait"),
    ("GET", _P + "/aggregated/operations", "globalOperations.aggregatedList"),
    ("POST", r"/token", "oauth.token"),
]]


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


class ComputeServer:
    """Serves ``compute`` over HTTP. ``calls`` counts requests per method; ``errors`` holds this fake's bugs."""

    def __init__(self, compute: Compute, require_auth: bool = False) -> None:
        self.compute = compute
        self.calls: Counter[str] = Counter()
        self.errors: list[str] = []
        self._server = LocalServer(type("Handler", (_ApiHandler,), {"api": self}), "fake-gce-api")
        self.endpoint = f"http://127.0.0.1:{self._server.port}"
        self.auth = Auth(f"{self.endpoint}/token", require_auth)

    def stop(self) -> None:
        self._server.stop()

    def dispatch(self, method: str, path: str, query: dict[str, str], raw: bytes,
                 headers: dict[str, str]) -> tuple[int, str]:
        """One HTTP request: (status, JSON text)."""
        route = next(((name, m) for verb, pattern, name in ROUTES
                      if verb == method and (m := pattern.fullmatch(path))), None)
        if route is None:
            error = ApiError(404, "notFound", f"{method} {path}: no such Compute Engine API method")
            return 404, json.dumps(error.body())
        name, match = route
        with self.compute.changed:
            self.calls[name] += 1
            if name == "oauth.token":
                status, payload = self.auth.oauth_token(raw)
                return status, json.dumps(payload)
            try:
                user = self.auth.authenticate(headers)
                body = parse_message(REQUEST_TYPES[name], raw, name) if name in REQUEST_TYPES else {}
                text = json.dumps(self.compute.call(name, match.groupdict(), query, body, user))  # under the lock
            except ApiError as err:
                return err.status, json.dumps(err.body())
            except Exception as err:  # noqa: BLE001 - a bug in this fake must reach the test (500 + errors), not hang it
                self.errors.append(f"{name}: {type(err).__name__}: {err}")
                return 500, json.dumps(ApiError(500, "internalError", f"fake bug: {err}").body())
            self.compute.changed.notify_all()
        self._check_response(name, text)
        return 200, text

    def _check_response(self, name: str, text: str) -> None:
        from google.protobuf import json_format

        type_name = RESPONSE_TYPES.get(name, "Operation")
        try:
            check_message(type_name, text)
        except json_format.ParseError as err:
            self.errors.append(f"{name}: response does not parse as {type_name}: {err}")


class _ApiHandler(QuietHandler):
    protocol_version = "HTTP/1.1"
    api: ComputeServer

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, text = self.api.dispatch(method, parts.path, query, raw, dict(self.headers))
        self.send(status, text.encode(), "application/json; charset=UTF-8")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")
