"""The VMs behind the fake Compute API: each instance's ``startup-script`` run by the shared VM runner on every
boot, with a metadata server of its own, its data disk at ``$SPOT_ROOT/data``, and the GCS emulator's address."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..fake_vm import VmRunner
from . import metadata
from .compute import Compute, Instance
from .storage import FakeGcs


class Machines:
    """Implements the API's :class:`~.compute.Host`; :meth:`serve` starts running the API's instances."""

    def __init__(self, vms: Path, project_number: str, gcs: FakeGcs | None,
                 issue_token: Callable[[str], dict[str, Any]]) -> None:
        self.runner = VmRunner(vms, "fake-gce-runner", self._step)
        self.project_number, self.gcs, self.issue_token = project_number, gcs, issue_token
        self._servers: dict[str, metadata.MetadataServer] = {}  # by instance id
        self._retired: list[metadata.MetadataServer] = []  # to stop outside the API's lock
        self._compute: Compute | None = None

    @property
    def compute(self) -> Compute:
        assert self._compute is not None, "serve() first"
        return self._compute

    def serve(self, compute: Compute) -> None:
        self._compute = compute
        self.runner.start()

    def metadata_host(self, instance_id: str) -> str:
        return self._servers[instance_id].host

    def clear(self) -> None:
        """Every VM killed and every metadata server retired (the caller holds the API's lock)."""
        self.runner.kill_all()
        self._retired.extend(self._servers.values())
        self._servers.clear()

    def close(self) -> None:
        self.runner.close()
        with self.compute.changed:
            self.clear()
        self.stop_retired()

    def stop_retired(self) -> None:
        with self.compute.changed:
            retired, self._retired = self._retired, []
        for server in retired:
            server.stop()

    # -- Host -----------------------------------------------------------------------------------------------
    def created(self, vm: Instance) -> None:
        vm_dir = self.runner.vm_dir(vm.instance_id)
        shutil.rmtree(vm_dir, ignore_errors=True)  # a new VM with an old name gets a fresh root
        (vm_dir / "root").mkdir(parents=True)
        compute = self.compute

        def tree() -> dict[str, Any] | None:
            if compute.vms.get((vm.zone, vm.name)) is not vm:
                return None
            return metadata.tree(vm.resource, compute.project, self.project_number, preempted=vm.preempted,
                                 maintenance_event=vm.maintenance_event)

        source = metadata.Source(tree, self.issue_token, compute.changed, lambda: compute.closed)
        self._servers[vm.instance_id] = metadata.MetadataServer(source, vm.name)

    def power_off(self, vm: Instance) -> None:
        self.runner.kill(vm.instance_id)

    def removed(self, vm: Instance) -> None:
        self.runner.retire(vm.instance_id)
        self.runner.mount_data(vm.instance_id, None)
        if server := self._servers.pop(vm.instance_id, None):
            self._retired.append(server)

    def disks_changed(self, vm: Instance) -> None:
        self.runner.mount_data(vm.instance_id, self.compute.data_disk_dir(vm))

    def console(self, vm: Instance) -> bytes:
        path = self.runner.console_path(vm.instance_id)
        return path.read_bytes() if path.exists() else b""

    # -- the runner's tick ------------------------------------------------------------------------------------
    def _step(self) -> None:
        compute = self.compute
        with compute.changed:
            now = time.monotonic()
            for vm in list(compute.vms.values()):
                if vm.status in ("PROVISIONING", "STAGING") and now >= vm.running_at:
                    self._boot(vm)
                    compute.changed.notify_all()
                elif vm.status == "RUNNING" and self.runner.shutdown_requested(vm.instance_id):
                    compute.halt(vm)  # the guest shut itself down
                    compute.changed.notify_all()
                self.disks_changed(vm)
        self.stop_retired()

    def _boot(self, vm: Instance) -> None:
        self.compute.started(vm)
        self.disks_changed(vm)
        script = vm.item("startup-script")
        if not script:
            return
        host = self._servers[vm.instance_id].host
        env = {"GCE_METADATA_HOST": host, "GCE_METADATA_IP": host, **(self.gcs.env() if self.gcs else {})}
        self.runner.boot(vm.instance_id, script.encode(), env, "startup-script")
