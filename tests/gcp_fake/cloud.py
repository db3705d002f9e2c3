"""The offline Google Cloud for tests: the Compute API of one project (compute.py) served on 127.0.0.1
(server.py), whose instances run as local processes (machines.py), and the control layer a test drives.

Control (:class:`tests.fake_cloud.FakeCloud`, ids ``<zone>/<name>`` as the GCP backend's): ``preempt`` (metadata
``instance/preempted`` turns TRUE, ACPI soft-off SIGTERM, hard-off after the notice, a
``compute.instances.preempted`` zone operation), ``rebalance`` (metadata ``instance/maintenance-event``), ``lose``
(a host error: killed, a ``compute.instances.hostError`` operation), ``fail_launch``/``throttle`` (insert errors
shaped like the real ones), ``hold_termination``/``finish_termination`` (a deleted VM stays ``STOPPING`` with its
delete operation ``RUNNING`` until the test lets it go).

Layout under ``root``: ``vms/<zone>/<name>/`` (see tests/fake_vm.py) and ``disks/<zone>/<disk>/``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ..waiting import wait_for
from .compute import HOST_ERROR_OP, PREEMPTED_OP, Compute, Instance, Operation
from .machines import Machines
from .server import ComputeServer
from .storage import FakeGcs


class FakeGcp:
    """A Compute Engine project on 127.0.0.1 whose instances run their startup scripts as local processes.

    Use as a context manager or call ``close()``. API calls for another project than ``project`` are 404s.
    """

    name = "gcp"

    def __init__(self, root: Path, *, project: str = "test-project", gcs: FakeGcs | None = None,
                 boot_seconds: float = 0.2, operation_seconds: float = 0.0, project_number: str = "123456789012",
                 require_auth: bool = False) -> None:
        self.root, self.project, self.gcs = Path(root), project, gcs
        (self.root / "disks").mkdir(parents=True, exist_ok=True)
        self.machines = Machines(self.root / "vms", project_number, gcs,
                                 lambda email: self.api.auth.issue_token(email))
        self.compute = Compute(project, self.root / "disks", self.machines, boot_seconds=boot_seconds,
                               operation_seconds=operation_seconds)
        self._changed = self.compute.changed
        self.api = ComputeServer(self.compute, require_auth)
        self.endpoint = self.api.endpoint
        self._closed = False
        self.machines.serve(self.compute)

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def __enter__(self) -> FakeGcp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill every VM process, stop every server. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._changed:
            self.compute.closed = True  # wakes operation waits and metadata long-polls for good
            self._changed.notify_all()
        self.machines.close()
        self.api.stop()

    def reset(self) -> None:
        """Forget all resources, operations, injected failures and counters (service-account keys stay valid)."""
        with self._changed:
            self.machines.clear()
            self.compute.clear()
            self.api.calls.clear()
            self.api.auth.used.clear()
            for sub in ("vms", "disks"):
                shutil.rmtree(self.root / sub, ignore_errors=True)
                (self.root / sub).mkdir(parents=True)
            self._changed.notify_all()
        self.machines.stop_retired()

    # -- counters ----------------------------------------------------------------------------------------------
    @property
    def calls(self) -> Counter[str]:
        """Requests received per REST method (``instances.insert``...), including refused ones."""
        return self.api.calls

    @property
    def auth(self) -> Counter[str]:
        """How API calls authenticated: anonymous / token / jwt."""
        return self.api.auth.used

    @property
    def errors(self) -> list[str]:
        """Bugs in this fake (a response the real client could not parse, a failed runner tick)."""
        return [*self.api.errors, *self.machines.runner.errors]

    # -- FakeCloud ---------------------------------------------------------------------------------------------
    def preempt(self, instance_id: str, notice_seconds: float | None = 2.0) -> None:
        """Preempt a spot VM: ``instance/preempted`` turns TRUE (waking long-polls), status STOPPING and SIGTERM to
        its processes (ACPI soft-off); after ``notice_seconds`` SIGKILL and TERMINATED, or deleted with
        instanceTerminationAction=DELETE. ``None``: killed at once. A compute.instances.preempted operation
        records it."""
        with self._changed:
            vm = self._vm(instance_id)
            if not vm.resource["scheduling"].get("preemptible"):
                raise ValueError(f"{instance_id} is not a spot/preemptible VM: GCE cannot preempt it (use lose())")
            if vm.status not in ("PROVISIONING", "STAGING", "RUNNING"):
                raise ValueError(f"{instance_id} is {vm.status}: nothing to preempt")
            vm.preempted = True
            op = self.compute.system_op(vm, PREEMPTED_OP, "Instance was preempted.", status="RUNNING")
            if notice_seconds is None:
                self._hard_off(vm, op)
            else:
                vm.resource["status"] = "STOPPING"
                self.machines.runner.soft_off(instance_id)
                self.machines.runner.schedule(instance_id, notice_seconds, lambda: self._hard_off(vm, op))
            self._changed.notify_all()

    def rebalance(self, instance_id: str) -> None:
        """Announce host maintenance in the VM's metadata (``instance/maintenance-event``), waking long-polls."""
        with self._changed:
            self._vm(instance_id).maintenance_event = "TERMINATE_ON_HOST_MAINTENANCE"
            self._changed.notify_all()

    def lose(self, instance_id: str, *, delete: bool = False) -> None:
        """A host error: processes SIGKILLed, a compute.instances.hostError operation, the instance TERMINATED
        (or gone, with ``delete``); no notice, no preempted operation."""
        with self._changed:
            vm = self._vm(instance_id)
            if vm.status == "TERMINATED":
                raise ValueError(f"{instance_id} is TERMINATED: nothing to lose")
            self.compute.system_op(vm, HOST_ERROR_OP, "Instance terminated by Compute Engine.")
            if delete:
                self.compute.delete_vm(vm)
            else:
                self.compute.halt(vm)
            self._changed.notify_all()

    def fail_launch(self, code: str, instance_type: str | None = None, zone: str | None = None,
                    times: int | None = None, *, status: int | None = None) -> None:
        """Make matching instances.insert calls fail. Codes in ``OPERATION_ERRORS`` (capacity, quota) fail on the
        operation, as GCE reports them; others (``rateLimitExceeded``...) fail the HTTP call with ``status``
        (default from ``HTTP_ERRORS``, else 400). ``times=None``: until :meth:`clear_failures`."""
        with self._changed:
            self.compute.fail_insert(code, zone, instance_type, times, status)

    def throttle(self, times: int = 1) -> None:
        """The next ``times`` instances.insert calls get ``rateLimitExceeded`` (429)."""
        self.fail_launch("rateLimitExceeded", times=times)

    def clear_failures(self) -> None:
        with self._changed:
            self.compute.clear_failures()

    def hold_termination(self, instance_id: str) -> None:
        """instances.delete of this VM leaves it ``STOPPING`` (processes killed, disks attached) with its delete
        operation ``RUNNING`` until :meth:`finish_termination`: what GCE shows for the tens of seconds a delete
        takes. Changes to a VM being deleted are refused (``resourceNotReady``)."""
        with self._changed:
            self.compute.hold_deletion(self._vm(instance_id))

    def finish_termination(self, instance_id: str) -> None:
        """End a held deletion: the VM goes, with its ``autoDelete`` disks; its delete operations are DONE."""
        zone, name = _split(instance_id)
        with self._changed:
            self.compute.finish_deletion(zone, name)
            self._changed.notify_all()

    def wait_gone(self, instance_id: str, timeout: float = 60.0) -> str:
        """Wait until the VM is TERMINATED or deleted and its processes are dead; returns ``TERMINATED`` or
        ``DELETED``."""
        key = _split(instance_id)

        def gone() -> str | None:
            with self._changed:
                vm = self.compute.vms.get(key)
                status = "DELETED" if vm is None else vm.status
            return status if status in ("TERMINATED", "DELETED") and not self.machines.runner.running(
                instance_id) else None

        return wait_for(gone, timeout, what=f"{instance_id} to be gone")

    def vm_dir(self, instance_id: str) -> Path:
        return self.machines.runner.vm_dir(instance_id)

    def data_dir(self, instance_id: str) -> Path:
        return self.machines.runner.data_dir(instance_id)

    def console(self, instance_id: str) -> str:
        return self.machines.runner.console(instance_id)

    def tracked(self, instance_id: str) -> set[int]:
        return self.machines.runner.tracked(instance_id)

    def processes_alive(self) -> list[int]:
        """Pids of live processes started by any VM of this fake (including ones that left their group)."""
        return self.machines.runner.processes_alive()

    # -- inspection --------------------------------------------------------------------------------------------
    def instance(self, project: str, zone: str, name: str) -> dict[str, Any] | None:
        """A copy of the instance resource, None if there is none."""
        with self._changed:
            vm = self.compute.vms.get((zone, name)) if project == self.project else None
            return json.loads(json.dumps(vm.resource)) if vm else None

    def wait_status(self, project: str, zone: str, name: str, status: str | None,
                    timeout: float = 60.0) -> dict[str, Any] | None:
        """Wait until the instance has `status` (None: until it is gone); returns the instance."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                vm = self.instance(project, zone, name)
                if (vm is None and status is None) or (vm is not None and vm["status"] == status):
                    return vm
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{name}: {vm['status'] if vm else 'gone'} after {timeout}s, wanted {status}")
                self._changed.wait(min(remaining, 0.05))

    def disk_dir(self, zone: str, name: str) -> Path:
        return self.compute.disk_dir(zone, name)

    def metadata_host(self, instance_id: str) -> str:
        with self._changed:
            return self.machines.metadata_host(instance_id)

    # -- clients and credentials -------------------------------------------------------------------------------
    def client_options(self) -> Any:
        from google.api_core.client_options import ClientOptions

        return ClientOptions(api_endpoint=self.endpoint)

    def service_account_info(self, secret_marker: str | None = None, project: str | None = None,
                             email: str | None = None) -> dict[str, str]:
        """A service-account key (a fresh RSA key) whose token_uri is this fake's /token."""
        return self.api.auth.service_account_info(project or self.project, secret_marker, email)

    def airflow_conn(self, conn_id: str, project: str | None = None,
                     secret_marker: str | None = None) -> tuple[str, str]:
        """(`AIRFLOW_CONN_<ID>`, JSON) for a google_cloud_platform connection using a key from this fake."""
        project = project or self.project
        info = self.service_account_info(secret_marker, project=project)
        value = {"conn_type": "google_cloud_platform",
                 "extra": {"keyfile_dict": json.dumps(info), "project": project}}
        return f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(value)

    def _vm(self, instance_id: str) -> Instance:
        vm = self.compute.vms.get(_split(instance_id))
        if vm is None:
            raise ValueError(f"no instance {instance_id} in project {self.project}")
        return vm

    def _hard_off(self, vm: Instance, op: Operation) -> None:
        """The end of a preemption's notice (runner thread) or a preemption without one."""
        with self._changed:
            op.finish()
            if self.compute.vms.get((vm.zone, vm.name)) is vm and vm.status != "TERMINATED":
                if vm.resource["scheduling"].get("instanceTerminationAction") == "DELETE":
                    self.compute.delete_vm(vm)
                else:
                    self.compute.halt(vm)
            self._changed.notify_all()


def _split(instance_id: str) -> tuple[str, str]:
    """``<zone>/<name>`` → (zone, name)."""
    zone, sep, name = instance_id.partition("/")
    if not sep or not zone or not name or "/" in name:
        raise ValueError(f"{instance_id!r} is not a GCE instance id ('<zone>/<name>')")
    return zone, name
