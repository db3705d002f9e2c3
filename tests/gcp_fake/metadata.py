"""The GCE metadata server of one VM (``GCE_METADATA_HOST`` for its processes): ``computeMetadata/v1`` paths,
``?recursive``/``?alt=json``, long-polls (``wait_for_change``, ``last_etag``) and service-account tokens."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..fake_cloud import LocalServer, QuietHandler

PREFIX = "/computeMetadata/v1/"


@dataclass(frozen=True)
class Source:
    """What a metadata server reads, all under ``changed`` (notified whenever the VM changes)."""

    tree: Callable[[], dict[str, Any] | None]  # the VM's metadata; None once the VM is gone
    issue_token: Callable[[str], dict[str, Any]]  # an access token for a service account's email
    changed: threading.Condition
    closed: Callable[[], bool]


@dataclass(frozen=True)
class _Result:
    status: int
    body: str
    content_type: str = "application/text"

    @property
    def etag(self) -> str:
        return hashlib.sha1(f"{self.status}:{self.body}".encode()).hexdigest()[:16]


class _Handler(QuietHandler):
    protocol_version = "HTTP/1.1"
    source: Source

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path.startswith("/computeMetadata/") and self.headers.get("Metadata-Flavor") != "Google":
            self.send(403, b"Missing Metadata-Flavor:Google header.", "text/plain", {"Metadata-Flavor": "Google"})
            return
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        result = _get(self.source, parts.path, query)
        self.send(result.status, result.body.encode(), result.content_type,
                  {"Metadata-Flavor": "Google", "ETag": result.etag})


class MetadataServer:
    """One VM's metadata server on 127.0.0.1."""

    def __init__(self, source: Source, name: str) -> None:
        self._server = LocalServer(type("Handler", (_Handler,), {"source": source}), f"gce-metadata-{name}")
        self.host = f"127.0.0.1:{self._server.port}"

    def stop(self) -> None:
        self._server.stop()


def _get(source: Source, path: str, query: dict[str, str]) -> _Result:
    if path in ("", "/"):
        return _Result(200, "computeMetadata/\n")
    if not path.startswith(PREFIX):
        return _Result(404, "Not Found")
    relative = path[len(PREFIX):]
    with source.changed:
        result = _value(source, relative, query)
        if query.get("wait_for_change") != "true":
            return result
        last = query.get("last_etag")
        if last is not None and last != result.etag:
            return result  # changed since the caller's copy
        deadline = time.monotonic() + float(query.get("timeout_sec") or 300)
        start = result.etag
        while not source.closed() and result.etag == start:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            source.changed.wait(remaining)
            result = _value(source, relative, query)
        return result


def _value(source: Source, relative: str, query: dict[str, str]) -> _Result:
    tree = source.tree()
    if tree is None:
        return _Result(404, "Not Found")
    parts = [part for part in relative.split("/") if part]
    if len(parts) == 4 and parts[:2] == ["instance", "service-accounts"] and parts[3] == "token":
        accounts = tree["instance"]["service-accounts"]
        if parts[2] not in accounts:
            return _Result(404, "Not Found")
        return _Result(200, json.dumps(source.issue_token(accounts[parts[2]]["email"])), "application/json")
    node: Any = tree
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return _Result(404, "Not Found")
        node = node[part]
    if isinstance(node, dict):
        if query.get("recursive") == "true" or query.get("alt") == "json":
            return _Result(200, json.dumps(_camel_keys(node, parts[-1:] == ["attributes"])), "application/json")
        return _Result(200, "".join(f"{k}/\n" if isinstance(v, dict) else f"{k}\n" for k, v in node.items()))
    if query.get("alt") == "json":
        return _Result(200, json.dumps(node), "application/json")
    return _Result(200, "\n".join(node) if isinstance(node, list) else str(node))


def tree(resource: dict[str, Any], project: str, project_number: str, *, preempted: bool,
         maintenance_event: str) -> dict[str, Any]:
    """The metadata of an instance resource, as the VM's metadata server serves it."""
    accounts: dict[str, Any] = {}
    for account in resource.get("serviceAccounts", []):
        email = account.get("email") or f"{project_number}-compute@developer.gserviceaccount.com"
        entry = {"aliases": ["default"], "email": email, "scopes": account.get("scopes", [])}
        accounts.setdefault("default", entry)
        accounts[email] = {**entry, "aliases": []}
    name, zone = resource["name"], resource["zone"].rsplit("/", 1)[-1]
    machine_type = resource["machineType"].rsplit("/", 1)[-1]
    sched = resource["scheduling"]
    return {
        "instance": {
            "id": int(resource["id"]), "name": name, "zone": f"projects/{project_number}/zones/{zone}",
            "hostname": f"{name}.{zone}.c.{project}.internal",
            "machine-type": f"projects/{project_number}/machineTypes/{machine_type}",
            "preempted": "TRUE" if preempted else "FALSE", "maintenance-event": maintenance_event,
            "attributes": {item["key"]: item.get("value", "") for item in resource["metadata"].get("items", [])},
            "service-accounts": accounts, "description": resource.get("description", ""),
            "scheduling": {"preemptible": "TRUE" if sched.get("preemptible") else "FALSE",
                           "automatic-restart": "TRUE" if sched.get("automaticRestart") else "FALSE",
                           "on-host-maintenance": sched.get("onHostMaintenance", "")},
        },
        "project": {"project-id": project, "numeric-project-id": int(project_number), "attributes": {}},
    }


def _camel_keys(node: Any, keep: bool = False) -> Any:
    """Recursive metadata JSON uses camelCase keys (`machine-type` → `machineType`), except user attributes."""
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        name = key if keep else re.sub(r"-([a-z])", lambda m: m.group(1).upper(), key)
        out[name] = _camel_keys(value, keep=key == "attributes")
    return out
