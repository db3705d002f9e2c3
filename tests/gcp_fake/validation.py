"""What the Compute API refuses in a request body: names, labels, metadata items and scheduling, with its
own error reasons and messages."""

from __future__ import annotations

import re
from typing import Any

from .errors import invalid, required

NAME_RE = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
LABEL_KEY_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE_RE = re.compile(r"[a-z0-9_-]{0,63}")
METADATA_KEY_RE = re.compile(r"[a-zA-Z0-9_-]{1,128}")
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
ZERO_UUID = "00000000-0000-0000-0000-000000000000"


def check_name(name: str | None, field_name: str) -> str:
    if not name:
        raise required(field_name)
    if not NAME_RE.fullmatch(name):
        raise invalid(field_name, name, "Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
    return name


def check_labels(labels: dict[str, str], field_name: str) -> dict[str, str]:
    if len(labels) > 64:
        raise invalid(field_name, len(labels), "At most 64 labels are allowed.")
    for key, value in labels.items():
        if not LABEL_KEY_RE.fullmatch(key):
            raise invalid(field_name, key, f"Label key '{key}' violates format constraints. The key must start "
                          "with a lowercase character, can only contain lowercase letters, numeric characters, "
                          "underscores and dashes, and at most 63 characters long.")
        if not LABEL_VALUE_RE.fullmatch(value):
            raise invalid(field_name, value, f"Label value '{value}' violates format constraints. The value can "
                          "only contain lowercase letters, numeric characters, underscores and dashes, and at "
                          "most 63 characters long.")
    return dict(labels)


def check_metadata(metadata: dict[str, Any]) -> list[dict[str, str]]:
    items, seen = [], set()
    for item in metadata.get("items", []):
        key = item.get("key", "")
        if not METADATA_KEY_RE.fullmatch(key):
            raise invalid("resource.metadata", key, "Metadata keys must match [a-zA-Z0-9-_]{1,128}.")
        if key in seen:
            raise invalid("resource.metadata", key, "Duplicate metadata key.")
        if len(item.get("value", "").encode()) > 256 * 1024:
            raise invalid("resource.metadata", key, "Metadata values are limited to 256 KB.")
        seen.add(key)
        items.append({"key": key, "value": item.get("value", "")})
    return items


def check_request_id(request_id: str) -> None:
    if not UUID_RE.fullmatch(request_id) or request_id == ZERO_UUID:
        raise invalid("requestId", request_id, "The request id must be a valid UUID with the exception that zero "
                                               f"UUID is not supported ({ZERO_UUID}).")


def scheduling(given: dict[str, Any]) -> dict[str, Any]:
    """The instance's scheduling as GCE stores it (spot implies preemptible, no restart, TERMINATE)."""
    sched = dict(given)
    model = sched.get("provisioningModel") or "STANDARD"
    if model not in ("SPOT", "STANDARD"):
        raise invalid("resource.scheduling.provisioningModel", model, "Must be SPOT or STANDARD.")
    spot = model == "SPOT" or bool(sched.get("preemptible"))
    if spot:
        if sched.get("automaticRestart") is True:
            raise invalid("resource.scheduling.automaticRestart", "true",
                          "Preemptible and Spot VMs cannot have automatic restart.")
        if sched.get("onHostMaintenance", "TERMINATE") != "TERMINATE":
            raise invalid("resource.scheduling.onHostMaintenance", sched["onHostMaintenance"],
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
        raise invalid("resource.scheduling.instanceTerminationAction", action, "Must be STOP or DELETE.")
    if action is not None and model != "SPOT" and "maxRunDuration" not in sched:
        raise invalid("resource.scheduling.instanceTerminationAction", action,
                      "Termination action is only supported for Spot VMs or with maxRunDuration.")
    sched["provisioningModel"] = model
    return sched
