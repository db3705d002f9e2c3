"""The GCP backend: Compute Engine spot VMs, checkpoints in GCS, backup-save through a helper VM.

Credentials and project come from an ordinary ``google_cloud_platform`` connection (the google
provider's ``GoogleBaseHook``); Compute calls go through ``google.cloud.compute_v1``'s REST clients
(the ``api_endpoint`` option points them at a private endpoint). Per attempt:

- one spot VM (``provisioningModel: SPOT``, ``instanceTerminationAction: STOP``) inserted with a
  ``requestId`` per launch call and labels carrying the job identity, plus a separate **data disk**
  (device name ``spot-data``) with ``autoDelete: false``: the checkpoint directory survives the VM;
- a ``startup-script`` (:mod:`bootstrap`) that mounts the disk, runs the agent with the ``gce-metadata``
  notice source and powers off. The VM reaches GCS with its own service account: no Airflow secret
  is in its metadata;
- preemption is read from ``compute.instances.preempted`` zone operations, one list per zone per poll
  for all watched VMs;
- after a preemption without a final sync, the disk is detached from the stopped VM and attached
  read-only to a small on-demand helper VM in the same zone that copies new/changed files to GCS.
  No snapshots are made: the files go to GCS, so the next attempt restores from there in any zone.

Instance ids are ``"<zone>/<name>"``: triggers get only the id, and every Compute call needs the zone.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import uuid
from datetime import datetime
from typing import Any

from airflow_spot_provider.attempt import InstanceFacts, InstanceState
from airflow_spot_provider.backends.base import (
    ROLE_ATTEMPT,
    ROLE_DISK,
    ROLE_HELPER,
    BackupSaveRequest,
    BackupSaveResult,
    CloudResource,
    LaunchError,
    LaunchRequest,
    poll_until,
    prefix_parts,
)
from airflow_spot_provider.backends.cloud import CloudBackend, validate_common_options
from airflow_spot_provider.backends.gcp_pricing import on_demand_price, spot_price
from airflow_spot_provider.spec import check_keys

OPTIONS = (
    "project_id", "api_endpoint", "network", "subnetwork", "service_account", "external_ip", "python",
    "agent_install", "requirements", "helper_machine_type", "helper_image", "on_demand_prices", "spot_prices",
    "disk_type", "wait_timeout",
)
#: "No capacity here now": try the next type/zone (docs/design.md, "Capacity is waited for without a worker slot").
#: RESOURCE_NOT_FOUND: the type is not offered here.
CAPACITY_CODES = frozenset({
    "ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "QUOTA_EXCEEDED",
    "RESOURCE_NOT_FOUND", "RESOURCE_OPERATION_RATE_EXCEEDED_IN_ZONE",
})
#: "Slow down" or a transient server error: try the same placement again after a backoff.
THROTTLE_CODES = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "RATE_LIMIT_EXCEEDED", "backendError",
                            "internalError"})
DATA_DEVICE = "spot-data"
#: How a disk attached with device name ``spot-data`` appears inside a GCE guest.
VM_DEVICES = ("/dev/disk/by-id/google-spot-data",)
PROVIDER_LABEL = ("spot-provider", "airflow-spot-provider")
ROLE_LABEL = "spot-role"
#: The role label of an attempt's data disk.
DATA_ROLE = "data"
DESCRIPTION_KEY = "airflow-spot-provider"
PREEMPTED_OP = "compute.instances.preempted"
HOST_ERROR_OP = "compute.instances.hostError"
GONE_STATUSES = ("TERMINATED", "STOPPED", "SUSPENDED")
STATES = {"PROVISIONING": InstanceState.PENDING, "STAGING": InstanceState.PENDING, "RUNNING": InstanceState.RUNNING,
          "STOPPING": InstanceState.RUNNING, "SUSPENDING": InstanceState.RUNNING, "REPAIRING": InstanceState.RUNNING,
          **dict.fromkeys(GONE_STATUSES, InstanceState.TERMINATED)}
DEFAULT_IMAGE = "projects/debian-cloud/global/images/family/debian-12"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
#: Machine families with GPUs attached: they cannot live-migrate on host maintenance.
GPU_FAMILIES = ("a2-", "a3-", "a4-", "g2-", "g4-")
_NAMESPACE = uuid.UUID("5f0c1a52-6d3e-4c8e-9a57-1b2f3c4d5e6f")
_ZONE = re.compile(r"^[a-z]+-[a-z]+\d+-[a-z]$")
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_INSTANCE_ID = re.compile(r"^(?P<zone>[a-z]+-[a-z]+\d+-[a-z])/(?P<name>[a-z]([-a-z0-9]{0,61}[a-z0-9])?)$")
_MACHINE_TYPE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)+$")
_IMAGE = re.compile(r"^(https://www\.googleapis\.com/compute/v1/)?projects/[a-z0-9.:-]+/global/images/"
                    r"(family/)?[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")


# -- pure helpers ----------------------------------------------------------------------------------------------
def label_value(value: str) -> str:
    """A GCE label value for ``value``: itself when valid, else a readable prefix plus a hash (deterministic,
    so a resource stays findable by the same identity)."""
    if _LABEL_VALUE.match(value):
        return value
    clean = re.sub(r"[^a-z0-9_-]", "_", value.lower())[:50]
    return f"{clean}-{hashlib.sha256(value.encode()).hexdigest()[:12]}"


def identity_labels(tags: dict[str, str], role: str) -> dict[str, str]:
    return {**{key: label_value(value) for key, value in tags.items()}, ROLE_LABEL: role}


def split_id(instance_id: str) -> tuple[str, str]:
    """``"<zone>/<name>"`` → (zone, name)."""
    match = _INSTANCE_ID.match(instance_id or "")
    if not match:
        raise ValueError(f"{instance_id!r} is not a gcp instance id ('<zone>/<name>')")
    return match["zone"], match["name"]


def instance_name(request: LaunchRequest) -> str:
    return f"spot-{request.token[:16]}-{request.attempt}-{request.launch_try}"


def data_disk_name(name: str) -> str:
    return f"{name}-data"


def helper_name(name: str) -> str:
    return f"{name}-backup"


def request_id(*parts: str) -> str:
    """A ``requestId`` (a UUID): the same call always gets the same one, so GCE does it once."""
    return str(uuid.uuid5(_NAMESPACE, "\x1f".join(parts)))


def _epoch(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _last(url: str) -> str:
    return url.rsplit("/", 1)[-1] if url else ""


def _described(description: str) -> dict[str, Any]:
    """What this backend put in a resource's description (the unsanitized identity, the image)."""
    try:
        data = json.loads(description or "{}")
    except ValueError:
        return {}
    found = data.get(DESCRIPTION_KEY) if isinstance(data, dict) else None
    return found if isinstance(found, dict) else {}


def error_codes(err: Exception) -> set[str]:
    """Codes of a Compute error: an operation's ``errors[].code`` or an HTTP error's ``errors[].reason``."""
    codes = set()
    for item in getattr(err, "errors", None) or []:
        if isinstance(item, dict):
            codes.add(item.get("reason") or item.get("code") or "")
        else:
            codes.add(getattr(item, "code", "") or getattr(item, "reason", ""))
    if getattr(err, "code", None) == 429:
        codes.add("rateLimitExceeded")
    return {code for code in codes if code}


def validate_options(options: dict[str, Any]) -> None:
    check_keys("backend_options", options, OPTIONS)
    for key in ("project_id", "api_endpoint", "network", "subnetwork", "service_account", "python",
                "helper_machine_type", "helper_image", "disk_type"):
        if key in options and (not isinstance(options[key], str) or not options[key]):
            raise ValueError(f"backend_options.{key}: must be a non-empty string")
    if "external_ip" in options and not isinstance(options["external_ip"], bool):
        raise ValueError("backend_options.external_ip: must be true or false")
    validate_common_options(options, ("on_demand_prices", "spot_prices"))
    helper_type = options.get("helper_machine_type")
    if helper_type is not None and not _MACHINE_TYPE.match(helper_type):
        raise ValueError(f"backend_options.helper_machine_type: {helper_type!r} is not a machine type (like e2-small)")


class GcpBackend(CloudBackend):
    name = "gcp"
    store_package = "gcsfs"
    vm_devices = VM_DEVICES

    def __init__(self, conn_id: str | None = None, **options: Any) -> None:
        validate_options(options)
        super().__init__(conn_id=conn_id or "google_cloud_default", **options)
        self._clients: dict[str, Any] = {}
        self._credentials: Any = None
        self._project: str | None = options.get("project_id")
        self._lock = threading.Lock()  # describe builds clients from worker threads

    # -- connection ----------------------------------------------------------------------------
    def _connect(self) -> None:
        from airflow.providers.google.common.hooks.base_google import GoogleBaseHook

        credentials, project = GoogleBaseHook(gcp_conn_id=self.conn_id).get_credentials_and_project_id()
        self._credentials = credentials
        self._project = self._project or project
        if not self._project:
            raise ValueError(f"no project: set backend_options.project_id or the project of connection "
                             f"{self.conn_id!r}")

    @property
    def project(self) -> str:
        if self._project is None:
            with self._lock:
                self._connect()
        return self._project  # type: ignore[return-value]

    def _client(self, kind: str) -> Any:
        with self._lock:
            if kind not in self._clients:
                from google.api_core.client_options import ClientOptions
                from google.cloud import compute_v1

                if self._credentials is None:
                    self._connect()
                kwargs: dict[str, Any] = {"credentials": self._credentials, "transport": "rest"}
                if self.options.get("api_endpoint"):
                    kwargs["client_options"] = ClientOptions(api_endpoint=self.options["api_endpoint"])
                self._clients[kind] = getattr(compute_v1, kind)(**kwargs)
            return self._clients[kind]

    @property
    def instances(self) -> Any:
        return self._client("InstancesClient")

    @property
    def disks(self) -> Any:
        return self._client("DisksClient")

    @property
    def zone_operations(self) -> Any:
        return self._client("ZoneOperationsClient")

    def poll_key(self) -> tuple[str, ...]:
        return (self.name, self.conn_id, self.options.get("project_id") or "")

    def validate_machine(self, machine: Any) -> None:
        if not machine.instance_types:
            raise ValueError("machine.instance_types: the gcp backend needs at least one machine type")
        for i, name in enumerate(machine.instance_types):
            if not _MACHINE_TYPE.match(name):
                raise ValueError(f"machine.instance_types[{i}]: {name!r} is not a machine type (like n1-standard-4)")
        if not machine.zones:
            raise ValueError("machine.zones: the gcp backend needs at least one zone (like us-central1-a)")
        for i, zone in enumerate(machine.zones):
            if not _ZONE.match(zone):
                raise ValueError(f"machine.zones[{i}]: {zone!r} is not a zone (like us-central1-a)")
        if not _IMAGE.match(machine.image or ""):
            raise ValueError("machine.image: the gcp backend needs an image ('projects/P/global/images/NAME') or an "
                             "image family ('projects/P/global/images/family/FAMILY')")

    # -- building requests ---------------------------------------------------------------------
    def notice_source(self) -> dict[str, Any]:
        return {"source": "gce-metadata"}

    def _network(self, zone: str) -> dict[str, Any]:
        nic: dict[str, Any] = {}
        network, subnetwork = self.options.get("network"), self.options.get("subnetwork")
        if network:
            nic["network"] = network if "/" in network else f"global/networks/{network}"
        if subnetwork:
            nic["subnetwork"] = subnetwork if "/" in subnetwork else \
                f"regions/{zone.rsplit('-', 1)[0]}/subnetworks/{subnetwork}"
        if not nic:
            nic["network"] = "global/networks/default"
        if self.options.get("external_ip", True):  # pip and GCS without Cloud NAT / Private Google Access
            nic["access_configs"] = [{"name": "External NAT", "type_": "ONE_TO_ONE_NAT"}]
        return nic

    def _scheduling(self, machine_type: str, spot: bool) -> dict[str, Any]:
        if spot:
            return {"provisioning_model": "SPOT", "instance_termination_action": "STOP",
                    "on_host_maintenance": "TERMINATE", "automatic_restart": False}
        # A restart would rerun the startup script on a half-used disk: a host error ends the attempt instead.
        maintenance = "TERMINATE" if machine_type.startswith(GPU_FAMILIES) else "MIGRATE"
        return {"provisioning_model": "STANDARD", "on_host_maintenance": maintenance, "automatic_restart": False}

    def _vm_body(self, name: str, zone: str, machine_type: str, *, spot: bool, labels: dict[str, str],
                 description: str, image: str, script: str, data_disk: dict[str, Any] | None) -> dict[str, Any]:
        disk_type = f"zones/{zone}/diskTypes/{self.options.get('disk_type', 'pd-balanced')}"
        disks: list[dict[str, Any]] = [{"boot": True, "auto_delete": True, "initialize_params": {
            "source_image": image, "disk_type": disk_type, "labels": {**labels, ROLE_LABEL: "boot"}}}]
        if data_disk is not None:
            disks.append({**data_disk, "initialize_params": {**data_disk.get("initialize_params", {}),
                                                              "disk_type": disk_type}})
        return {
            "name": name, "machine_type": f"zones/{zone}/machineTypes/{machine_type}", "labels": labels,
            "description": description, "scheduling": self._scheduling(machine_type, spot), "disks": disks,
            "network_interfaces": [self._network(zone)],
            "metadata": {"items": [{"key": "startup-script", "value": script}]},
            "service_accounts": [{"email": self.options.get("service_account", "default"), "scopes": SCOPES}],
        }

    def insert_body(self, request: LaunchRequest) -> dict[str, Any]:
        if not request.image or not request.zone or not request.instance_type:
            raise ValueError("the gcp backend needs machine.image, a zone and a machine type for every launch")
        tags = request.identity.tags(request.attempt)
        name = instance_name(request)
        description = json.dumps({DESCRIPTION_KEY: {"tags": tags, "image": request.image}}, sort_keys=True)
        data_disk = {"device_name": DATA_DEVICE, "auto_delete": False, "initialize_params": {
            "disk_name": data_disk_name(name), "disk_size_gb": request.disk_gb, "description": description,
            "labels": identity_labels(tags, DATA_ROLE)}}
        return self._vm_body(name, request.zone, request.instance_type, spot=request.market == "spot",
                             labels=identity_labels(tags, ROLE_ATTEMPT), description=description, image=request.image,
                             script=self.boot_script(request), data_disk=data_disk)

    # -- worker side ---------------------------------------------------------------------------
    def launch(self, request: LaunchRequest) -> InstanceFacts:
        from google.api_core import exceptions

        existing = self.find(request)
        if existing is not None:
            return existing
        body = self.insert_body(request)
        rid = request_id(request.call_token, request.zone or "", request.instance_type or "")
        try:
            operation = self.instances.insert(request={"project": self.project, "zone": request.zone,
                                                       "instance_resource": body, "request_id": rid})
            operation.result(timeout=self.wait_timeout())
        except exceptions.Conflict:
            pass  # the name exists: an earlier call of this launch try created it (found below)
        except exceptions.GoogleAPICallError as err:
            codes = error_codes(err)
            if codes & CAPACITY_CODES:
                raise LaunchError(sorted(codes & CAPACITY_CODES)[0], str(err), move_on=True) from err
            if codes & THROTTLE_CODES:
                raise LaunchError(sorted(codes & THROTTLE_CODES)[0], str(err), move_on=False) from err
            raise
        inst = self._get(request.zone, body["name"])
        if inst is None:
            raise RuntimeError(f"instance {request.zone}/{body['name']} was inserted but is not on record")
        return self._facts(inst, request.zone, priced=True)

    def _aggregated_instances(self, filter_text: str) -> list[tuple[str, Any]]:
        pages = self.instances.aggregated_list(request={"project": self.project, "filter": filter_text})
        return [(_last(scope), inst) for scope, scoped in pages for inst in scoped.instances]

    def find(self, request: LaunchRequest) -> InstanceFacts | None:
        found = self._aggregated_instances(
            f'labels.spot-token = "{request.token}" AND labels.{ROLE_LABEL} = "{ROLE_ATTEMPT}"')
        if not found:
            return None
        zone, newest = max(found, key=lambda item: _epoch(item[1].creation_timestamp) or 0)
        return self._facts(newest, zone, priced=True)

    def _get(self, zone: str, name: str) -> Any | None:
        from google.api_core import exceptions

        try:
            return self.instances.get(project=self.project, zone=zone, instance=name)
        except exceptions.NotFound:
            return None

    def _get_disk(self, zone: str, name: str) -> Any | None:
        from google.api_core import exceptions

        try:
            return self.disks.get(project=self.project, zone=zone, disk=name)
        except exceptions.NotFound:
            return None

    def _facts(self, inst: Any, zone: str, priced: bool = False, preempted: bool = False,
               reason: str = "") -> InstanceFacts:
        status = inst.status
        state = STATES.get(status, InstanceState.PENDING)
        market = "spot" if inst.scheduling.provisioning_model == "SPOT" or inst.scheduling.preemptible \
            else "on-demand"
        machine_type = _last(inst.machine_type)
        gone = state is InstanceState.TERMINATED
        # No preempted/host-error operation and no message: the guest powered itself off (GCE gives no reason
        # code for that), so a VM that stopped before its agent started counts as a failed boot.
        guest_shutdown = gone and not reason and not inst.status_message
        if not reason and gone:
            reason = inst.status_message or f"stopped by its guest (status {status}, no preemption or host error)"
        on_demand = on_demand_price(machine_type, self.options.get("on_demand_prices")) if priced else None
        price = None
        if priced:
            price = spot_price(machine_type, self.options.get("spot_prices")) if market == "spot" else on_demand
        return InstanceFacts(
            instance_id=f"{zone}/{inst.name}", state=state, reason=reason, preempted=preempted,
            guest_shutdown=guest_shutdown, zone=zone,
            instance_type=machine_type, market=market, launched_at=_epoch(inst.creation_timestamp),
            ended_at=_epoch(inst.last_stop_timestamp) if gone else None, price_per_hour=price,
            on_demand_price_per_hour=on_demand,
        )

    def _wait_op(self, operation: Any) -> None:
        operation.result(timeout=self.wait_timeout())

    def _wait_status(self, zone: str, name: str, statuses: tuple[str, ...]) -> Any | None:
        """Poll until the instance has one of ``statuses`` (or is gone: None)."""
        def reached() -> tuple[bool, Any | None]:
            inst = self._get(zone, name)
            return inst is None or inst.status in statuses, inst

        return poll_until(reached, timeout=self.wait_timeout(), interval=0.5, timed_out=lambda inst: (
            f"{zone}/{name} did not reach {'/'.join(statuses)} in time (it is {inst.status})"))

    def terminate(self, instance_id: str) -> None:
        from google.api_core import exceptions

        zone, name = split_id(instance_id)
        inst = self._get(zone, name)
        if inst is None:
            return
        if inst.labels.get(ROLE_LABEL) == ROLE_HELPER:
            self._delete_instance(zone, name)  # a helper holds nothing worth keeping
            return
        if inst.status not in GONE_STATUSES:
            try:
                self._wait_op(self.instances.stop(project=self.project, zone=zone, instance=name))
            except (exceptions.NotFound, exceptions.BadRequest):
                pass  # gone meanwhile, or already stopping (a preemption in progress): wait below
        self._wait_status(zone, name, GONE_STATUSES)  # keeps its disks: backup-save reads the data disk

    def cancel(self, instance_id: str, token: str | None = None, *, keep_disk: bool = False) -> None:
        """GCE deletes the data disk with the VM (``autoDelete``); the delete operation is not waited for."""
        from google.api_core import exceptions

        zone, name = split_id(instance_id)
        inst = self._get(zone, name)
        if inst is None:
            if not keep_disk:  # the VM is gone: its data disk alone is left
                self.delete_disk(f"{zone}/{data_disk_name(name)}")
            return
        # Never through a helper: the disk it reads is attached to it under the same device name.
        owns_disk = not keep_disk and inst.labels.get(ROLE_LABEL) == ROLE_ATTEMPT
        if owns_disk and not self._auto_delete_data_disk(zone, inst):
            super().cancel(instance_id, token)  # being stopped, or the disk is elsewhere: wait
            return
        try:
            self.instances.delete(project=self.project, zone=zone, instance=name)
        except exceptions.NotFound:
            if owns_disk:  # deleted meanwhile, maybe before autoDelete applied
                self.delete_disk(f"{zone}/{data_disk_name(name)}")

    def _auto_delete_data_disk(self, zone: str, inst: Any) -> bool:
        """Make the attempt's data disk go with its VM; False when GCE cannot (detached, VM stopping or gone)."""
        from google.api_core import exceptions

        attached = next((d for d in inst.disks if d.device_name == DATA_DEVICE), None)
        if attached is None or _last(attached.source) != data_disk_name(inst.name):
            return False
        if attached.auto_delete:
            return True
        try:
            self._wait_op(self.instances.set_disk_auto_delete(project=self.project, zone=zone, instance=inst.name,
                                                              auto_delete=True, device_name=DATA_DEVICE))
        except (exceptions.NotFound, exceptions.BadRequest):
            return False
        return True

    def _delete_instance(self, zone: str, name: str) -> None:
        from google.api_core import exceptions

        try:
            self._wait_op(self.instances.delete(project=self.project, zone=zone, instance=name))
        except exceptions.NotFound:
            return
        self._wait_status(zone, name, ())

    def _detach(self, disk: Any, keep: str | None = None) -> None:
        """Detach ``disk`` from every instance using it except ``keep`` (a self link)."""
        from google.api_core import exceptions

        for user in list(disk.users):
            if user == keep:
                continue
            zone, name = _last(user.rsplit("/instances/", 1)[0]), _last(user)
            inst = self._get(zone, name)
            attached = [d for d in (inst.disks if inst else []) if d.source == disk.self_link]
            for item in attached:
                try:
                    self._wait_op(self.instances.detach_disk(project=self.project, zone=zone, instance=name,
                                                             device_name=item.device_name))
                except (exceptions.NotFound, exceptions.BadRequest):
                    pass  # detached meanwhile

    def backup_save(self, request: BackupSaveRequest) -> BackupSaveResult:
        zone, name = split_id(request.instance_id)
        disk = self._get_disk(zone, data_disk_name(name))
        if disk is None:
            return BackupSaveResult(skipped=True, reason="no data disk left to read")
        self.terminate(request.instance_id)  # never read a disk a live VM still writes
        helper = self._helper(zone, name, disk, request)
        # GCE refuses a disk attached read-write elsewhere: take it from the stopped VM first.
        self._detach(disk, keep=helper.self_link)
        helper = self._wait_status(zone, helper.name, ("RUNNING",) + GONE_STATUSES)
        if helper is None or helper.status != "RUNNING":
            raise RuntimeError(f"backup-save helper {zone}/{helper_name(name)} ended before the disk was attached")
        disk = self._get_disk(zone, data_disk_name(name))
        if disk is not None and helper.self_link not in disk.users:
            self._wait_op(self.instances.attach_disk(
                project=self.project, zone=zone, instance=helper.name,
                attached_disk_resource={"source": disk.self_link, "device_name": DATA_DEVICE, "mode": "READ_ONLY",
                                        "auto_delete": False}))
        return BackupSaveResult(helper_id=f"{zone}/{helper.name}")

    def _helper(self, zone: str, name: str, disk: Any, request: BackupSaveRequest) -> Any:
        """A small on-demand VM in the disk's zone that copies the disk to the store (idempotent by name)."""
        from google.api_core import exceptions

        hname = helper_name(name)
        existing = self._get(zone, hname)
        if existing is not None and existing.status not in GONE_STATUSES + ("STOPPING",):
            return existing
        if existing is not None:  # a helper from an earlier round that ended: start afresh
            self._delete_instance(zone, hname)
        described = _described(disk.description)
        labels = {k: v for k, v in disk.labels.items() if k != ROLE_LABEL}
        body = self._vm_body(hname, zone, self.options.get("helper_machine_type", "e2-small"), spot=False,
                             labels={**labels, ROLE_LABEL: ROLE_HELPER}, description=disk.description,
                             image=self.options.get("helper_image") or described.get("image") or DEFAULT_IMAGE,
                             script=self.helper_script(request), data_disk=None)
        try:
            self._wait_op(self.instances.insert(request={
                "project": self.project, "zone": zone, "instance_resource": body,
                "request_id": request_id(hname, disk.last_detach_timestamp or "", str(request.attempt))}))
        except exceptions.Conflict:
            pass  # inserted by an earlier call
        inst = self._get(zone, hname)
        if inst is None:
            raise RuntimeError(f"backup-save helper {zone}/{hname} was inserted but is not on record")
        return inst

    def finish_backup_save(self, instance_id: str, helper_id: str, marker: dict[str, Any] | None) -> BackupSaveResult:
        zone, name = split_id(helper_id)
        self._delete_instance(zone, name)  # detaches the data disk; release() deletes it
        return self.backup_result(helper_id, marker)

    def release(self, instance_id: str, token: str | None = None) -> None:
        zone, name = split_id(instance_id)
        self._delete_instance(zone, name)  # its boot disk goes with it (autoDelete)
        self.delete_disk(f"{zone}/{data_disk_name(name)}")

    def delete_disk(self, disk_id: str) -> None:
        from google.api_core import exceptions

        zone, name = split_id(disk_id)

        def deleted() -> tuple[bool, str]:
            disk = self._get_disk(zone, name)
            if disk is None:
                return True, ""
            self._detach(disk)
            try:
                self._wait_op(self.disks.delete(project=self.project, zone=zone, disk=name))
            except exceptions.NotFound:
                pass
            except exceptions.BadRequest as err:  # still in use: a detach is in flight
                return False, str(err)
            return True, ""

        poll_until(deleted, timeout=self.wait_timeout(), interval=0.5,
                   timed_out=lambda why: f"disk {disk_id} stayed in use: {why}")

    def list_instances(self) -> list[CloudResource]:
        provider = f'labels.{PROVIDER_LABEL[0]} = "{PROVIDER_LABEL[1]}"'
        instances = self._aggregated_instances(provider)
        pages = self.disks.aggregated_list(request={"project": self.project,
                                                    "filter": f'{provider} AND labels.{ROLE_LABEL} = "{DATA_ROLE}"'})
        disks = {f"{_last(scope)}/{disk.name}": disk for scope, scoped in pages for disk in scoped.disks}
        found, owned = [], set()
        for zone, inst in instances:
            role = inst.labels.get(ROLE_LABEL, ROLE_ATTEMPT)
            disk_id = f"{zone}/{data_disk_name(inst.name)}"
            if role == ROLE_ATTEMPT:
                owned.add(disk_id)
            found.append(CloudResource(tags=self._tags(inst.labels, inst.description), role=role,
                                       facts=self._facts(inst, zone),
                                       disk_id=disk_id if role == ROLE_ATTEMPT and disk_id in disks else None))
        # A data disk whose VM is no longer on record is left alone.
        found.extend(CloudResource(tags=self._tags(disk.labels, disk.description), role=ROLE_DISK, disk_id=disk_id)
                     for disk_id, disk in disks.items() if disk_id not in owned)
        return found

    @staticmethod
    def _tags(labels: Any, description: str) -> dict[str, str]:
        return {**dict(labels), **(_described(description).get("tags") or {})}

    def console_url(self, instance_id: str) -> str | None:
        zone, name = split_id(instance_id)
        return (f"https://console.cloud.google.com/compute/instancesDetail/zones/{zone}/instances/{name}"
                f"?project={self.project}")

    def storage_console_url(self, checkpoint_uri: str) -> str | None:
        bucket, prefix = prefix_parts(checkpoint_uri)
        return f"https://console.cloud.google.com/storage/browser/{bucket}/{prefix}"

    def console_output(self, instance_id: str, tail: int = 20) -> list[str]:
        from google.api_core import exceptions

        try:
            zone, name = split_id(instance_id)
            output = self.instances.get_serial_port_output(project=self.project, zone=zone, instance=name)
        except (ValueError, exceptions.GoogleAPICallError):  # console output is a courtesy in the log
            return []
        return (output.contents or "").splitlines()[-tail:]

    # -- triggerer side ------------------------------------------------------------------------
    async def aclose(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, {}
        for client in clients.values():
            await asyncio.to_thread(client.transport.close)

    async def describe(self, instance_ids: list[str]) -> dict[str, InstanceFacts]:
        facts: dict[str, InstanceFacts] = {}
        by_zone: dict[str, list[str]] = {}
        for instance_id in instance_ids:
            match = _INSTANCE_ID.match(instance_id or "")
            if match:
                by_zone.setdefault(match["zone"], []).append(match["name"])
            else:
                facts[instance_id] = InstanceFacts(instance_id, InstanceState.MISSING, reason="not a gcp instance id")
        # No async Compute client exists: one thread per zone, one list of each kind per zone.
        results = await asyncio.gather(*(asyncio.to_thread(self._describe_zone, zone, names)
                                         for zone, names in by_zone.items()))
        for result in results:
            facts.update(result)
        return facts

    def _describe_zone(self, zone: str, names: list[str]) -> dict[str, InstanceFacts]:
        listed = self.instances.list(request={
            "project": self.project, "zone": zone,
            "filter": f'labels.{PROVIDER_LABEL[0]} = "{PROVIDER_LABEL[1]}"'})
        wanted = set(names)
        instances = {inst.name: inst for inst in listed if inst.name in wanted}
        events = self.zone_operations.list(request={
            "project": self.project, "zone": zone,
            "filter": f'(operationType = "{PREEMPTED_OP}") OR (operationType = "{HOST_ERROR_OP}")'})
        # By instance name (from the target link): the cloud's own word on why each VM stopped.
        reasons: dict[str, str] = {}
        for op in events:
            target = _last(op.target_link)
            if target in wanted and reasons.get(target) != PREEMPTED_OP:
                reasons[target] = op.operation_type
        facts = {}
        for name in names:
            instance_id, reason = f"{zone}/{name}", reasons.get(name, "")
            inst = instances.get(name)
            if inst is None:
                facts[instance_id] = InstanceFacts(instance_id, InstanceState.MISSING, reason=reason or "notFound",
                                                   preempted=reason == PREEMPTED_OP, zone=zone)
            else:
                facts[instance_id] = self._facts(inst, zone, preempted=reason == PREEMPTED_OP, reason=reason)
        return facts
