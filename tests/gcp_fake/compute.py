"""The Compute Engine API of one project: instances, disks and zone operations, as the REST methods the
provider uses see them. HTTP, authentication and the wire format are the server's (server.py); processes,
directories and metadata servers are the host's (:class:`Host`, implemented by the cloud in cloud.py).

Strict where GCE is: ids are digit strings, names, labels and metadata follow GCE's formats, ``requestId`` must
be a UUID and deduplicates, label fingerprints are enforced, a disk in use cannot be attached elsewhere
read-write or deleted, a VM being deleted takes no changes.
"""

from __future__ import annotations

import base64
import random
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from .errors import ApiError, already_exists, in_use, invalid, not_found, not_ready, required
from .filters import FilterError, compile_filter
from .validation import check_labels, check_metadata, check_name, check_request_id, scheduling

API_ROOT = "https://www.googleapis.com/compute/v1/"
DATA_DEVICE = "spot-data"  # the device name under which a VM sees its data disk at $SPOT_ROOT/data
DISK_REF_RE = re.compile(r"(?:.*/)?(?:projects/(?P<project>[^/]+)/)?zones/(?P<zone>[^/]+)/disks/(?P<name>[^/]+)")
MACHINE_TYPE_RE = re.compile(r"(?:.*/)?zones/(?P<zone>[^/]+)/machineTypes/(?P<type>[a-z0-9][a-z0-9-]*)")
PREEMPTED_OP = "compute.instances.preempted"
HOST_ERROR_OP = "compute.instances.hostError"

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


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _fingerprint() -> str:
    return base64.b64encode(secrets.token_bytes(8)).decode()


def _partial(url: str) -> str:
    """`projects/...` part of a resource URL, as the API quotes resources in messages."""
    return url[url.index("projects/"):] if "projects/" in url else url


@dataclass
class Operation:
    resource: dict[str, Any]
    done_at: float | None = None  # monotonic time an artificially slow operation completes

    def view(self) -> dict[str, Any]:
        if self.resource["status"] != "DONE" and self.done_at is not None and time.monotonic() >= self.done_at:
            self.finish()
        return self.resource

    def finish(self) -> None:
        self.resource.update(status="DONE", progress=100, endTime=now())


@dataclass
class Instance:
    zone: str
    name: str
    resource: dict[str, Any]
    running_at: float = 0.0  # when a PROVISIONING instance boots
    preempted: bool = False  # metadata instance/preempted, until the next boot
    maintenance_event: str = "NONE"  # metadata instance/maintenance-event, until the next boot

    @property
    def instance_id(self) -> str:
        """The provider's id of a GCE instance."""
        return f"{self.zone}/{self.name}"

    @property
    def status(self) -> str:
        return self.resource["status"]

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


class Host(Protocol):
    """What the API needs from whatever runs its VMs."""

    def created(self, vm: Instance) -> None:
        """A new VM: a fresh directory and metadata server."""

    def power_off(self, vm: Instance) -> None:
        """Its processes end at once (stop, preemption, a delete)."""

    def removed(self, vm: Instance) -> None:
        """It is gone for good."""

    def disks_changed(self, vm: Instance) -> None:
        """A disk was attached or detached."""

    def console(self, vm: Instance) -> bytes:
        """Its serial port output."""


class Compute:
    """The resources and REST methods of one project. Every call holds ``changed``, and notifies it after."""

    def __init__(self, project: str, disks_root: Path, host: Host, *, boot_seconds: float = 0.2,
                 operation_seconds: float = 0.0) -> None:
        self.project, self.disks_root, self.host = project, Path(disks_root), host
        self.boot_seconds, self.operation_seconds = boot_seconds, operation_seconds
        self.changed = threading.Condition(threading.RLock())
        self.closed = False  # wakes waits and long-polls for good
        self._random = random.Random()
        self._ids: set[str] = set()
        self.clear()

    def clear(self) -> None:
        """Forget every resource, operation and injected failure (disk directories are the caller's)."""
        self.vms: dict[tuple[str, str], Instance] = {}
        self._disks: dict[tuple[str, str], dict[str, Any]] = {}
        self._ops: dict[str, dict[str, Operation]] = {}  # zone → name → operation
        self._request_ids: dict[str, tuple[str, str]] = {}  # requestId → (zone, operation name)
        self._failures: list[_InsertFailure] = []
        self._held: set[tuple[str, str]] = set()  # VMs whose delete waits for finish_deletion
        self._deleting: dict[tuple[str, str], list[Operation]] = {}  # held deletions in progress

    # -- the REST entry point ----------------------------------------------------------------------------------
    def call(self, method: str, args: dict[str, str], query: dict[str, str], body: dict[str, Any],
             user: str) -> dict[str, Any]:
        """One REST method (``instances.insert``...) with its path arguments; the caller holds ``changed``."""
        if args["project"] != self.project:
            raise not_found(f"projects/{args['project']}")
        request_id = query.get("requestId")
        if request_id is not None:
            check_request_id(request_id)
            seen = self._request_ids.get(request_id.lower())
            if seen is not None:  # the same request again: the same operation, nothing done twice
                return self._ops[seen[0]][seen[1]].view()
        handler = getattr(self, "api_" + method.replace(".", "_"))
        result = handler(args=args, query=query, body=body, user=user)
        if request_id is not None and result.get("kind") == "compute#operation":
            self._request_ids[request_id.lower()] = (result["zone"].rsplit("/", 1)[-1], result["name"])
        return result

    # -- what the cloud's control layer uses -------------------------------------------------------------------
    def vm(self, zone: str, name: str) -> Instance:
        vm = self.vms.get((zone, name))
        if vm is None:
            raise not_found(f"projects/{self.project}/zones/{zone}/instances/{name}")
        return vm

    def disk_dir(self, zone: str, name: str) -> Path:
        return self.disks_root / zone / name

    def data_disk_dir(self, vm: Instance) -> Path | None:
        """The directory of the disk attached under :data:`DATA_DEVICE`, if one is."""
        source = next((d["source"] for d in vm.resource.get("disks", []) if d.get("deviceName") == DATA_DEVICE),
                      None)
        match = DISK_REF_RE.fullmatch(source) if source else None
        return self.disk_dir(match["zone"], match["name"]) if match else None

    def fail_insert(self, reason: str, zone: str | None, machine_type: str | None, times: int | None,
                    status: int | None) -> None:
        self._failures.append(_InsertFailure(reason, zone, machine_type, times, status))

    def clear_failures(self) -> None:
        self._failures.clear()

    def system_op(self, vm: Instance, op_type: str, message: str, status: str = "DONE") -> Operation:
        """A system event on the VM (preemption, host error), as its zone's operations list shows it."""
        return self._new_op(vm.zone, op_type, vm.resource["selfLink"], vm.resource["id"], user="system",
                            status=status, statusMessage=message)

    def started(self, vm: Instance) -> None:
        vm.preempted, vm.maintenance_event = False, "NONE"
        vm.resource.update(status="RUNNING", lastStartTimestamp=now())

    def halt(self, vm: Instance) -> None:
        self.host.power_off(vm)
        vm.resource.update(status="TERMINATED", lastStopTimestamp=now())

    def delete_vm(self, vm: Instance) -> None:
        """The VM goes, with its ``autoDelete`` disks; the others are released."""
        self.host.removed(vm)
        for attached in vm.resource.get("disks", []):
            disk = self._disk_by_ref(vm.zone, attached["source"], "disks.source")
            self._release(disk, vm.resource["selfLink"])
            if attached.get("autoDelete"):
                self._drop_disk(disk)
        del self.vms[(vm.zone, vm.name)]

    def hold_deletion(self, vm: Instance) -> None:
        self._held.add((vm.zone, vm.name))

    def finish_deletion(self, zone: str, name: str) -> None:
        self._held.discard((zone, name))
        ops = self._deleting.pop((zone, name), [])
        if ops and (vm := self.vms.get((zone, name))) is not None:
            self.delete_vm(vm)
        for op in ops:
            op.finish()

    # -- instances ---------------------------------------------------------------------------------------------
    def api_instances_insert(self, args: dict[str, str], body: dict[str, Any], user: str,
                             **_: Any) -> dict[str, Any]:
        zone = args["zone"]
        name = check_name(body.get("name"), "resource.name")
        link = f"{self._zone_url(zone)}/instances/{name}"
        if (zone, name) in self.vms:
            raise already_exists(f"projects/{self.project}/zones/{zone}/instances/{name}")
        machine = MACHINE_TYPE_RE.fullmatch(body.get("machineType", ""))
        if not machine or machine["zone"] != zone:
            raise invalid("resource.machineType", body.get("machineType", ""),
                          f"Must be a URL to a machine type in zone {zone} (zones/{zone}/machineTypes/TYPE).")
        failure = self._match_failure(zone, machine["type"])
        if failure is not None:
            return self._failed_insert(failure, zone, link, user)
        sched = scheduling(body.get("scheduling", {}))
        labels = check_labels(body.get("labels", {}), "resource.labels")
        items = check_metadata(body.get("metadata", {}))
        instance_id = self._new_id()
        plans = self._plan_disks(zone, name, body.get("disks", []))
        resource = {
            **body, "kind": "compute#instance", "id": instance_id, "name": name, "creationTimestamp": now(),
            "zone": self._zone_url(zone), "machineType": f"{self._zone_url(zone)}/machineTypes/{machine['type']}",
            "status": "PROVISIONING", "scheduling": sched, "labelFingerprint": _fingerprint(),
            "metadata": {"kind": "compute#metadata", "fingerprint": _fingerprint(), "items": items},
            "networkInterfaces": self._nics(body.get("networkInterfaces", [])), "selfLink": link,
            "cpuPlatform": "Intel Cascade Lake", "fingerprint": _fingerprint(), "startRestricted": False,
            "deletionProtection": bool(body.get("deletionProtection", False)),
        }
        resource["labels"] = labels
        if not labels:
            del resource["labels"]
        resource["disks"] = [self._attach(zone, link, plan) for plan in plans]
        vm = Instance(zone, name, resource, running_at=time.monotonic() + self.boot_seconds)
        self.vms[(zone, name)] = vm
        self.host.created(vm)
        return self._new_op(zone, "insert", link, instance_id, user=user).view()

    def api_instances_get(self, args: dict[str, str], **_: Any) -> dict[str, Any]:
        return self._vm(args).resource

    def api_instances_list(self, args: dict[str, str], query: dict[str, str], **_: Any) -> dict[str, Any]:
        zone = args["zone"]
        items = [vm.resource for vm in self.vms.values() if vm.zone == zone]
        return self._list(items, query, "compute#instanceList", f"{self._zone_url(zone)}/instances")

    def api_instances_aggregatedList(self, query: dict[str, str], **_: Any) -> dict[str, Any]:
        scoped: dict[str, list[dict[str, Any]]] = {}
        for vm in self.vms.values():
            scoped.setdefault(f"zones/{vm.zone}", []).append(vm.resource)
        return self._aggregated(query, "compute#instanceAggregatedList", "instances", scoped)

    def api_instances_delete(self, args: dict[str, str], user: str, **_: Any) -> dict[str, Any]:
        vm = self._vm(args)
        key, link, target_id = (vm.zone, vm.name), vm.resource["selfLink"], vm.resource["id"]
        if key in self._held:  # torn down, but on record until finish_deletion
            if key not in self._deleting:
                vm.resource["status"] = "STOPPING"
                self.host.power_off(vm)
            op = self._new_op(vm.zone, "delete", link, target_id, user=user, status="RUNNING")
            self._deleting.setdefault(key, []).append(op)
            return op.view()
        self.delete_vm(vm)
        return self._new_op(vm.zone, "delete", link, target_id, user=user).view()

    def api_instances_start(self, args: dict[str, str], user: str, **_: Any) -> dict[str, Any]:
        vm = self._vm(args)
        if vm.status == "TERMINATED":
            vm.resource["status"] = "PROVISIONING"
            vm.running_at = time.monotonic() + self.boot_seconds
        elif vm.status == "STOPPING":
            raise not_ready(_partial(vm.resource["selfLink"]))
        return self._vm_op(vm, "start", user)

    def api_instances_stop(self, args: dict[str, str], user: str, **_: Any) -> dict[str, Any]:
        vm = self._not_deleting(self._vm(args))
        if vm.status != "TERMINATED":
            vm.resource["status"] = "STOPPING"
            self.halt(vm)  # the operation is DONE once the instance is TERMINATED, as on GCE
        return self._vm_op(vm, "stop", user)

    def api_instances_attachDisk(self, args: dict[str, str], body: dict[str, Any], user: str,
                                 **_: Any) -> dict[str, Any]:
        vm = self._not_deleting(self._vm(args))
        if "source" not in body:
            raise required("resource.source")
        disk = self._disk_by_ref(vm.zone, body["source"], "resource.source")
        if vm.resource["selfLink"] in disk.get("users", []):
            raise invalid("resource.source", body["source"], "The disk is already attached to this instance.")
        device = body.get("deviceName") or disk["name"]
        if any(d.get("deviceName") == device for d in vm.resource["disks"]):
            raise invalid("resource.deviceName", device, "Device name is already in use on this instance.")
        self._check_free(disk, body.get("mode", "READ_WRITE"))
        index = max(d["index"] for d in vm.resource["disks"]) + 1
        spec = {**body, "deviceName": device, "boot": False}
        vm.resource["disks"].append(self._attach(vm.zone, vm.resource["selfLink"],
                                                 {"spec": spec, "index": index, "disk": disk}))
        self.host.disks_changed(vm)
        return self._vm_op(vm, "attachDisk", user)

    def api_instances_detachDisk(self, args: dict[str, str], query: dict[str, str], user: str,
                                 **_: Any) -> dict[str, Any]:
        vm = self._not_deleting(self._vm(args))
        device = query.get("deviceName")
        if not device:
            raise required("deviceName")
        attached = self._attached(vm, device)
        if attached.get("boot") and vm.status != "TERMINATED":
            raise invalid("deviceName", device, "The boot disk of a running instance cannot be detached.")
        vm.resource["disks"].remove(attached)
        self._release(self._disk_by_ref(vm.zone, attached["source"], "source"), vm.resource["selfLink"])
        self.host.disks_changed(vm)
        return self._vm_op(vm, "detachDisk", user)

    def api_instances_setDiskAutoDelete(self, args: dict[str, str], query: dict[str, str], user: str,
                                        **_: Any) -> dict[str, Any]:
        """Both query parameters are required (the client always sends them); autoDelete is a JSON boolean."""
        vm = self._vm(args)
        for field_name in ("autoDelete", "deviceName"):
            if not query.get(field_name):
                raise required(field_name)
        flag = query["autoDelete"]
        if flag not in ("true", "false"):
            raise invalid("autoDelete", flag, "Must be a boolean (true or false).")
        attached = self._attached(vm, query["deviceName"])
        if vm.status == "STOPPING":  # being stopped (a preemption) or deleted
            raise not_ready(_partial(vm.resource["selfLink"]))
        attached["autoDelete"] = flag == "true"
        return self._vm_op(vm, "setDiskAutoDelete", user)

    def api_instances_setLabels(self, args: dict[str, str], body: dict[str, Any], user: str,
                                **_: Any) -> dict[str, Any]:
        vm = self._vm(args)
        if body.get("labelFingerprint") != vm.resource["labelFingerprint"]:
            raise ApiError(412, "conditionNotMet", "Labels fingerprint either invalid or resource labels have "
                                                   "changed")
        labels = check_labels(body.get("labels", {}), "labels")
        vm.resource["labels"] = labels
        if not labels:
            del vm.resource["labels"]
        vm.resource["labelFingerprint"] = _fingerprint()
        return self._vm_op(vm, "setLabels", user)

    def api_instances_getSerialPortOutput(self, args: dict[str, str], query: dict[str, str],
                                          **_: Any) -> dict[str, Any]:
        vm = self._vm(args)
        data = self.host.console(vm)
        start = min(int(query.get("start") or 0), len(data))
        return {"kind": "compute#serialPortOutput", "contents": data[start:].decode(errors="replace"),
                "start": str(start), "next": str(len(data)), "selfLink": f"{vm.resource['selfLink']}/serialPort"}

    # -- disks -------------------------------------------------------------------------------------------------
    def api_disks_get(self, args: dict[str, str], **_: Any) -> dict[str, Any]:
        return self._disk(args["zone"], args["name"])

    def api_disks_list(self, args: dict[str, str], query: dict[str, str], **_: Any) -> dict[str, Any]:
        zone = args["zone"]
        items = [d for (z, _n), d in self._disks.items() if z == zone]
        return self._list(items, query, "compute#diskList", f"{self._zone_url(zone)}/disks")

    def api_disks_aggregatedList(self, query: dict[str, str], **_: Any) -> dict[str, Any]:
        scoped: dict[str, list[dict[str, Any]]] = {}
        for (zone, _name), disk in self._disks.items():
            scoped.setdefault(f"zones/{zone}", []).append(disk)
        return self._aggregated(query, "compute#diskAggregatedList", "disks", scoped)

    def api_disks_delete(self, args: dict[str, str], user: str, **_: Any) -> dict[str, Any]:
        disk = self._disk(args["zone"], args["name"])
        self._check_free(disk, "READ_WRITE")
        self._drop_disk(disk)
        return self._new_op(args["zone"], "delete", disk["selfLink"], disk["id"], user=user).view()

    # -- operations --------------------------------------------------------------------------------------------
    def api_zoneOperations_get(self, args: dict[str, str], **_: Any) -> dict[str, Any]:
        return self._op(args["zone"], args["name"]).view()

    def api_zoneOperations_wait(self, args: dict[str, str], **_: Any) -> dict[str, Any]:
        op = self._op(args["zone"], args["name"])
        deadline = time.monotonic() + 30  # the real wait returns after at most ~2 minutes, DONE or not
        while op.view()["status"] != "DONE" and not self.closed and time.monotonic() < deadline:
            self.changed.wait(0.05)
        return op.view()

    def api_zoneOperations_list(self, args: dict[str, str], query: dict[str, str], **_: Any) -> dict[str, Any]:
        zone = args["zone"]
        items = [op.view() for op in self._ops.get(zone, {}).values()]
        return self._list(items, query, "compute#operationList", f"{self._zone_url(zone)}/operations")

    def api_globalOperations_aggregatedList(self, query: dict[str, str], **_: Any) -> dict[str, Any]:
        scoped = {f"zones/{zone}": [op.view() for op in ops.values()] for zone, ops in self._ops.items()}
        return self._aggregated(query, "compute#operationAggregatedList", "operations", scoped)

    # -- helpers -----------------------------------------------------------------------------------------------
    def _zone_url(self, zone: str) -> str:
        return f"{API_ROOT}projects/{self.project}/zones/{zone}"

    def _new_id(self) -> str:
        while True:
            value = str(self._random.randrange(10**18, 10**19))
            if value not in self._ids:
                self._ids.add(value)
                return value

    def _new_op(self, zone: str, op_type: str, target_link: str, target_id: str, *, user: str,
                status: str = "DONE", error: tuple[int, str, str, str] | None = None, **extra: Any) -> Operation:
        op_id = self._new_id()
        name = f"operation-{op_id}"
        scope_url = self._zone_url(zone)
        started = now()
        resource: dict[str, Any] = {
            "kind": "compute#operation", "id": op_id, "name": name, "operationType": op_type, "zone": scope_url,
            "targetLink": target_link, "targetId": target_id, "status": "RUNNING", "user": user, "progress": 0,
            "insertTime": started, "startTime": started, "selfLink": f"{scope_url}/operations/{name}", **extra,
        }
        if error is not None:
            http_status, http_message, code, message = error
            resource.update(error={"errors": [{"code": code, "message": message}]}, httpErrorStatusCode=http_status,
                            httpErrorMessage=http_message)
        op = Operation(resource)
        if status == "DONE" and self.operation_seconds > 0:
            op.done_at = time.monotonic() + self.operation_seconds
        elif status == "DONE":
            op.finish()
        self._ops.setdefault(zone, {})[name] = op
        return op

    def _vm_op(self, vm: Instance, op_type: str, user: str) -> dict[str, Any]:
        return self._new_op(vm.zone, op_type, vm.resource["selfLink"], vm.resource["id"], user=user).view()

    def _op(self, zone: str, name: str) -> Operation:
        op = self._ops.get(zone, {}).get(name)
        if op is None:
            raise not_found(f"projects/{self.project}/zones/{zone}/operations/{name}")
        return op

    def _vm(self, args: dict[str, str]) -> Instance:
        return self.vm(args["zone"], args["name"])

    def _not_deleting(self, vm: Instance) -> Instance:
        if (vm.zone, vm.name) in self._deleting:
            raise not_ready(_partial(vm.resource["selfLink"]))
        return vm

    def _attached(self, vm: Instance, device: str) -> dict[str, Any]:
        attached = next((d for d in vm.resource["disks"] if d.get("deviceName") == device), None)
        if attached is None:
            raise invalid("deviceName", device, f"No attached disk found with device name '{device}'")
        return attached

    def _list(self, resources: list[dict[str, Any]], query: dict[str, str], kind: str,
              self_link: str) -> dict[str, Any]:
        try:
            predicate = compile_filter(query.get("filter", ""))
        except FilterError as err:
            raise invalid("filter", query.get("filter"), f"Invalid list filter expression: {err}") from None
        items = [r for r in resources if predicate(r)]
        start = int(query.get("pageToken") or 0)
        size = int(query.get("maxResults") or 500)
        result: dict[str, Any] = {"kind": kind, "id": self_link.removeprefix(API_ROOT),
                                  "items": items[start:start + size], "selfLink": self_link}
        if start + size < len(items):
            result["nextPageToken"] = str(start + size)
        return result

    def _aggregated(self, query: dict[str, str], kind: str, key: str,
                    scoped: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        result: dict[str, Any] = {"kind": kind, "id": f"projects/{self.project}/aggregated/{key}", "items": {},
                                  "selfLink": f"{API_ROOT}projects/{self.project}/aggregated/{key}"}
        for scope, resources in sorted(scoped.items()):
            listed = self._list(resources, {"filter": query.get("filter", "")}, kind, result["selfLink"])
            if listed["items"]:
                result["items"][scope] = {key: listed["items"]}
        return result

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

    def _failed_insert(self, rule: _InsertFailure, zone: str, link: str, user: str) -> dict[str, Any]:
        if rule.reason in OPERATION_ERRORS:
            status, http_message, template = OPERATION_ERRORS[rule.reason]
            message = template.format(project=self.project, zone=zone, region=zone.rsplit("-", 1)[0])
            return self._new_op(zone, "insert", link, self._new_id(), user=user,
                                error=(status, http_message, rule.reason, message)).view()
        status, message = HTTP_ERRORS.get(rule.reason, (400, rule.reason))
        raise ApiError(rule.status or status, rule.reason, message)

    def _nics(self, given: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**nic, "kind": "compute#networkInterface", "name": f"nic{index}",
                 "network": nic.get("network") or f"{API_ROOT}projects/{self.project}/global/networks/default",
                 "networkIP": f"10.128.{self._random.randrange(256)}.{self._random.randrange(2, 255)}",
                 "fingerprint": _fingerprint(), "stackType": nic.get("stackType", "IPV4_ONLY")}
                for index, nic in enumerate(given)]

    def _plan_disks(self, zone: str, name: str, given: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Validate every disk before anything is created: insert is all or nothing."""
        plans, boots, new_names = [], 0, set()
        for index, spec in enumerate(given):
            boot = bool(spec.get("boot"))
            boots += boot
            if "initializeParams" in spec:
                params = spec["initializeParams"]
                disk_name = params.get("diskName") or (name if boot else f"{name}-disk-{index}")
                check_name(disk_name, f"resource.disks[{index}].initializeParams.diskName")
                if (zone, disk_name) in self._disks or disk_name in new_names:
                    raise already_exists(f"projects/{self.project}/zones/{zone}/disks/{disk_name}")
                if params.get("sourceSnapshot"):  # this project has no snapshots
                    raise not_found(_partial(params["sourceSnapshot"]))
                if boot and not params.get("sourceImage"):
                    raise required(f"resource.disks[{index}].initializeParams.sourceImage")
                check_labels(params.get("labels", {}), f"resource.disks[{index}].initializeParams.labels")
                new_names.add(disk_name)
                plans.append({"spec": spec, "index": index, "create": disk_name})
            elif "source" in spec:
                disk = self._disk_by_ref(zone, spec["source"], f"resource.disks[{index}].source")
                self._check_free(disk, spec.get("mode", "READ_WRITE"))
                plans.append({"spec": spec, "index": index, "disk": disk})
            else:
                raise required(f"resource.disks[{index}].source")
        if boots != 1:
            raise invalid("resource.disks", boots, "An instance must have exactly one boot disk.")
        return plans

    @staticmethod
    def _check_free(disk: dict[str, Any], mode: str) -> None:
        if mode == "READ_WRITE" and disk.get("users"):
            raise in_use(_partial(disk["selfLink"]), _partial(disk["users"][0]))

    def _attach(self, zone: str, instance_link: str, plan: dict[str, Any]) -> dict[str, Any]:
        spec = plan["spec"]
        if "create" in plan:
            params = spec["initializeParams"]
            disk = self._create_disk(zone, {
                "name": plan["create"], "sizeGb": params.get("diskSizeGb", "10"),
                "type": params.get("diskType", "pd-balanced"), "labels": params.get("labels", {}),
                **{k: params[k] for k in ("sourceImage", "description") if k in params}})
        else:
            disk = plan["disk"]
        disk.setdefault("users", []).append(instance_link)
        disk["lastAttachTimestamp"] = now()
        attached = {k: v for k, v in spec.items() if k != "initializeParams"}
        attached.update(kind="compute#attachedDisk", type=spec.get("type", "PERSISTENT"),
                        mode=spec.get("mode", "READ_WRITE"), source=disk["selfLink"], index=plan["index"],
                        boot=bool(spec.get("boot")), autoDelete=bool(spec.get("autoDelete", False)),
                        interface=spec.get("interface", "SCSI"), diskSizeGb=disk["sizeGb"],
                        deviceName=spec.get("deviceName") or f"persistent-disk-{plan['index']}")
        return attached

    def _release(self, disk: dict[str, Any], instance_link: str) -> None:
        users = [u for u in disk.get("users", []) if u != instance_link]
        if users:
            disk["users"] = users
        else:
            disk.pop("users", None)
        disk["lastDetachTimestamp"] = now()

    def _disk(self, zone: str, name: str) -> dict[str, Any]:
        disk = self._disks.get((zone, name))
        if disk is None:
            raise not_found(f"projects/{self.project}/zones/{zone}/disks/{name}")
        return disk

    def _disk_by_ref(self, zone: str, ref: str, field_name: str) -> dict[str, Any]:
        match = DISK_REF_RE.fullmatch(ref)
        if not match:
            raise invalid(field_name, ref, "Must be a URL to a disk (projects/P/zones/Z/disks/D).")
        if (match["project"] or self.project) != self.project:
            raise not_found(_partial(ref))
        return self._disk(match["zone"], match["name"])

    def _create_disk(self, zone: str, spec: dict[str, Any]) -> dict[str, Any]:
        name = spec["name"]
        disk_type = spec.get("type") or "pd-balanced"
        if "/" not in disk_type:
            disk_type = f"{self._zone_url(zone)}/diskTypes/{disk_type}"
        disk = {**spec, "kind": "compute#disk", "id": self._new_id(), "name": name, "creationTimestamp": now(),
                "zone": self._zone_url(zone), "status": "READY", "sizeGb": str(spec.get("sizeGb") or "10"),
                "type": disk_type, "labelFingerprint": _fingerprint(), "physicalBlockSizeBytes": "4096",
                "selfLink": f"{self._zone_url(zone)}/disks/{name}"}
        if not disk.get("labels"):
            disk.pop("labels", None)
        path = self.disk_dir(zone, name)
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        self._disks[(zone, name)] = disk
        return disk

    def _drop_disk(self, disk: dict[str, Any]) -> None:
        zone = disk["zone"].rsplit("/", 1)[-1]
        del self._disks[(zone, disk["name"])]
        shutil.rmtree(self.disk_dir(zone, disk["name"]), ignore_errors=True)
