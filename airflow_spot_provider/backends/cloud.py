"""What the cloud backends (aws, gcp) share: their options' common checks, the boot scripts of an attempt
and of a backup-save helper, and the reading of a helper's marker."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from airflow_spot_provider.agent.backup import BackupConfig
from airflow_spot_provider.backends.base import BackupSaveRequest, BackupSaveResult, LaunchRequest, SpotBackend
from airflow_spot_provider.backends.bootstrap import attempt_script, backup_script, default_agent_install
from airflow_spot_provider.spec import number

#: Where a VM's boot script mounts the data disk, relative to the agent's directory (``$SPOT_ROOT``).
VM_DATA_DIR = "data"


def validate_common_options(options: dict[str, Any], price_keys: tuple[str, ...]) -> None:
    install = options.get("agent_install")
    if install is not None and not (isinstance(install, list) and all(
            isinstance(run, list) and all(isinstance(a, str) for a in run) for run in install)):
        raise ValueError("backend_options.agent_install: must be a list of pip argument lists ([] when the image "
                         "already has the agent)")
    requirements = options.get("requirements", [])
    if not isinstance(requirements, list) or not all(isinstance(r, str) for r in requirements):
        raise ValueError("backend_options.requirements: must be a list of strings")
    for key in price_keys:
        prices = options.get(key) or {}
        if not isinstance(prices, dict):
            raise ValueError(f"backend_options.{key}: must be a dict {{machine type: $/hour}}")
        for name, price in prices.items():
            number(f"backend_options.{key}[{name!r}]", price)
    number("backend_options.wait_timeout", options.get("wait_timeout", 300), exclusive=True)


class CloudBackend(SpotBackend):
    """A backend whose attempts are VMs booted with :func:`bootstrap.attempt_script`."""

    #: The fsspec package the VM needs for the store (s3fs, gcsfs).
    store_package = ""
    #: Where the data disk may appear inside the VM.
    vm_devices: tuple[str, ...] = ()

    def notice_source(self) -> dict[str, Any]:
        raise NotImplementedError

    def agent_install(self) -> list[list[str]]:
        install = self.options.get("agent_install")
        return default_agent_install(self.store_package) if install is None else install

    def python(self) -> str:
        return self.options.get("python", "python3")

    def boot_script(self, request: LaunchRequest) -> str:
        """The attempt's boot script (EC2 user data, GCE startup-script): no secrets, every value quoted."""
        agent = request.agent_config(instance_id=request.token, work_dir=VM_DATA_DIR, notice=self.notice_source())
        return attempt_script(asdict(agent), python=self.python(), devices=self.vm_devices,
                              agent_install=self.agent_install(), requirements=self.options.get("requirements", []))

    def helper_script(self, request: BackupSaveRequest) -> str:
        """A backup-save helper's boot script: mount the dead attempt's disk read-only, copy it, power off."""
        config = BackupConfig(checkpoint_uri=request.checkpoint_uri, attempt=request.attempt,
                              checkpoint_pattern=request.checkpoint_pattern, data_dir=VM_DATA_DIR)
        return backup_script(asdict(config), python=self.python(), devices=self.vm_devices,
                             agent_install=self.agent_install())

    @staticmethod
    def backup_result(helper_id: str, marker: dict[str, Any] | None) -> BackupSaveResult:
        """What helper ``helper_id`` reported in its ``backup-save`` marker (None: it ended without one).

        The result names the helper, so the ledger's ``backup_save`` says which VM did the copy.
        """
        if marker is None:
            return BackupSaveResult(helper_id=helper_id, error="the helper VM ended without writing a result")
        if marker.get("error"):
            return BackupSaveResult(helper_id=helper_id, error=str(marker["error"]))
        return BackupSaveResult(uploaded=list(marker.get("uploaded") or []), bytes=int(marker.get("bytes") or 0),
                                latest=marker.get("latest"), reason=marker.get("reason", ""), helper_id=helper_id)
