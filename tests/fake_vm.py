"""The VMs of the fake clouds: each boot runs the VM's boot script (user data, startup-script) as local processes.

One :class:`VmRunner` per fake cloud. A VM lives in ``<vms>/<instance id>/``::

    <script name>        the boot script of the latest boot
    console.log          its output (the serial console), with one ``fake-vm: boot N`` line per boot
    bin/                 shutdown, poweroff and halt: shims that ask the cloud to power the VM off
    shutdown-requested   what a shim writes; the cloud reads it with :meth:`VmRunner.shutdown_requested`
    root/                the VM's "/" ($HOME and $SPOT_ROOT); root/data is its data disk (a link to the disk)

The script runs under ``bash`` in its own session with a clean environment whose PATH starts with the shims: the
real ``shutdown`` is never reachable (tests may run as root). A VM's processes are its session's and process
group's members, their descendants, and every process seen as one of those before (pid and start time): a child
that leaves the group (``setsid``, a double fork) while the runner watches is still the VM's, and dies with it.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

SHUTDOWN_COMMANDS = ("shutdown", "poweroff", "halt")
SHUTDOWN_FILE = "shutdown-requested"
DATA_MOUNT = "data"  # the data disk, relative to the VM's root
KILL_WAIT = 5.0  # seconds a SIGKILLed VM gets to be gone before the runner logs it and moves on


@dataclass(frozen=True)
class _Proc:
    handle: psutil.Process
    ppid: int
    group: int
    session: int
    started: float


class _ProcessTable:
    """One pass over the live (not zombie) processes: who is whose parent, group and session."""

    def __init__(self) -> None:
        self.procs: dict[int, _Proc] = {}
        self.children: dict[int, list[int]] = {}
        for handle in psutil.process_iter(["ppid", "status", "create_time"]):
            info = handle.info
            if info["status"] in (None, psutil.STATUS_ZOMBIE) or info["create_time"] is None:
                continue
            try:
                proc = _Proc(handle, info["ppid"], os.getpgid(handle.pid), os.getsid(handle.pid), info["create_time"])
            except OSError:
                continue  # gone meanwhile
            self.procs[handle.pid] = proc
            self.children.setdefault(proc.ppid, []).append(handle.pid)

    def of(self, boot: Boot) -> list[_Proc]:
        """The boot's live processes; a boot with none left and its script reaped is settled for good."""
        if boot.settled:
            return []
        leader = boot.proc.pid
        found = {pid for pid, proc in self.procs.items()
                 if leader in (proc.session, proc.group) or boot.seen.get(pid) == proc.started}
        stack = list(found)
        while stack:
            for child in self.children.get(stack.pop(), ()):
                if child not in found:
                    found.add(child)
                    stack.append(child)
        if not found and boot.proc.poll() is not None:
            boot.settled = True  # an empty session gains no members: nothing to scan for any more
        return [self.procs[pid] for pid in found]


@dataclass
class Boot:
    """One boot of a VM: its script's process, and every process seen as the VM's (pid → start time)."""

    instance_id: str
    number: int
    proc: subprocess.Popen[bytes]
    seen: dict[int, float] = field(default_factory=dict)
    killed: bool = False
    settled: bool = False


class VmRunner:
    """Boots, watches and kills the VMs of one fake cloud, from a thread that also calls the cloud's ``step``.

    ``step`` (the cloud's: boot what is due, end what the cloud ended) and actions given to :meth:`schedule`
    run on the runner thread; an exception there is logged and kept in ``errors``, and the runner goes on.
    The runner's own lock is taken last: ``step`` may hold the cloud's locks while it calls the runner.
    """

    def __init__(self, vms: Path, name: str, step: Callable[[], None], interval: float = 0.05,
                 track_interval: float = 0.3) -> None:
        self.vms = Path(vms)
        self.vms.mkdir(parents=True, exist_ok=True)
        self.errors: list[str] = []
        self._step, self._interval, self._track_interval = step, interval, track_interval
        self._lock = threading.RLock()
        self._boots: dict[str, list[Boot]] = {}
        self._retired: list[Boot] = []  # boots of VMs that are gone, watched until nothing of them is left
        self._due: list[tuple[float, int, str]] = []
        self._actions: dict[str, tuple[int, Callable[[], None]]] = {}
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- layout -----------------------------------------------------------------------------------------------
    def vm_dir(self, instance_id: str) -> Path:
        return self.vms / instance_id

    def data_dir(self, instance_id: str) -> Path:
        return self.vm_dir(instance_id) / "root" / DATA_MOUNT

    def console_path(self, instance_id: str) -> Path:
        return self.vm_dir(instance_id) / "console.log"

    def console(self, instance_id: str) -> str:
        path = self.console_path(instance_id)
        return path.read_text(errors="replace") if path.exists() else ""

    def shutdown_requested(self, instance_id: str) -> bool:
        """Whether the guest of the VM's live boot ran ``shutdown`` (or ``poweroff``, ``halt``)."""
        boot = self.last_boot(instance_id)
        return boot is not None and not boot.killed and (self.vm_dir(instance_id) / SHUTDOWN_FILE).exists()

    def mount_data(self, instance_id: str, disk: Path | None) -> None:
        """Keep ``root/data`` linked to the attached data disk's directory, and absent when none is attached."""
        link = self.data_dir(instance_id)
        if disk is None:
            if link.is_symlink():
                link.unlink()
            return
        if link.is_symlink() and Path(os.readlink(link)) == disk:
            return
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            return  # the guest made a real directory there: leave its files alone
        disk.mkdir(parents=True, exist_ok=True)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(disk, target_is_directory=True)

    # -- processes --------------------------------------------------------------------------------------------
    def boot(self, instance_id: str, script: bytes, env: dict[str, str], script_name: str) -> Boot:
        """Run ``script`` as the VM's new boot; ``env`` adds the cloud's variables to the VM's base environment."""
        vm_dir = self.vm_dir(instance_id)
        (vm_dir / "root").mkdir(parents=True, exist_ok=True)
        (vm_dir / SHUTDOWN_FILE).unlink(missing_ok=True)
        path = vm_dir / script_name
        path.write_bytes(script)
        full_env = {**self._base_env(vm_dir), **env}
        with self._lock:
            boots = self._boots.setdefault(instance_id, [])
            with open(self.console_path(instance_id), "ab") as console:
                console.write(f"fake-vm: boot {len(boots) + 1}: {script_name}\n".encode())
                console.flush()
                proc = subprocess.Popen(
                    ["bash", str(path)], cwd=vm_dir / "root", env=full_env, stdin=subprocess.DEVNULL,
                    stdout=console, stderr=subprocess.STDOUT, start_new_session=True)  # the VM: its own session
            boot = Boot(instance_id, len(boots) + 1, proc)
            boots.append(boot)
            return boot

    def last_boot(self, instance_id: str) -> Boot | None:
        with self._lock:
            boots = self._boots.get(instance_id)
            return boots[-1] if boots else None

    def soft_off(self, instance_id: str) -> None:
        """ACPI soft-off: SIGTERM to every process of the VM; the cloud decides when the hard-off comes."""
        with self._lock:
            table = _ProcessTable()
            for boot in self._boots.get(instance_id, []):
                for proc in table.of(boot):
                    with contextlib.suppress(psutil.Error):
                        proc.handle.terminate()

    def kill(self, instance_id: str) -> None:
        """Hard power-off: SIGKILL every process of the VM, and wait until they are gone."""
        with self._lock:
            self._kill(self._boots.get(instance_id, []))

    def retire(self, instance_id: str) -> None:
        """The VM is gone for good (its id may come again): kill it, and watch its leftovers apart."""
        with self._lock:
            boots = self._boots.pop(instance_id, [])
            self._kill(boots)
            self._retired.extend(boots)

    def running(self, instance_id: str) -> bool:
        """Whether any process of the VM is still alive."""
        with self._lock:
            table = _ProcessTable()
            return any(table.of(boot) for boot in self._boots.get(instance_id, []))

    def tracked(self, instance_id: str) -> set[int]:
        """Pids the runner has seen as the VM's: killed with it even after they leave its session."""
        with self._lock:
            return {pid for boot in self._boots.get(instance_id, []) for pid in boot.seen}

    def processes_alive(self) -> list[int]:
        """Pids of live processes of any VM this runner ever booted."""
        with self._lock:
            table = _ProcessTable()
            return sorted({proc.handle.pid for boot in self._all_boots() for proc in table.of(boot)})

    def track(self) -> None:
        """Record every process of every live VM, so that one leaving its session later is still known."""
        with self._lock:
            boots = [boot for boot in self._all_boots() if not boot.settled]
            if not boots:
                return
            table = _ProcessTable()
            for boot in boots:
                for proc in table.of(boot):
                    boot.seen.setdefault(proc.handle.pid, proc.started)

    def kill_all(self) -> None:
        """Kill every VM and forget every boot and scheduled action (the cloud starts empty)."""
        with self._lock:
            self._kill(self._all_boots())
            self._boots.clear()
            self._retired = [boot for boot in self._retired if not boot.settled]
            self._due.clear()
            self._actions.clear()

    # -- the runner thread ------------------------------------------------------------------------------------
    def schedule(self, instance_id: str, delay: float, action: Callable[[], None]) -> None:
        """Run ``action`` on the runner thread after ``delay`` seconds, replacing the VM's earlier one."""
        with self._lock:
            seq = next(self._seq)
            self._actions[instance_id] = (seq, action)
            heapq.heappush(self._due, (time.monotonic() + delay, seq, instance_id))

    def cancel(self, instance_id: str) -> None:
        with self._lock:
            self._actions.pop(instance_id, None)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop the thread (``step`` is not called again), then kill every VM. Safe to call twice."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.kill_all()

    def _run(self) -> None:
        tracked_at = 0.0
        while not self._stop.wait(self._interval):
            try:
                for action in self._pop_due():
                    action()
                self._step()
                if time.monotonic() - tracked_at >= self._track_interval:
                    self.track()
                    tracked_at = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - the runner must outlive a bad tick; tests read errors
                log.exception("fake VM runner %s: tick failed", self._thread.name)
                self.errors.append(repr(exc))

    def _pop_due(self) -> list[Callable[[], None]]:
        now, due = time.monotonic(), []
        with self._lock:
            while self._due and self._due[0][0] <= now:
                _, seq, instance_id = heapq.heappop(self._due)
                if self._actions.get(instance_id, (None,))[0] == seq:
                    due.append(self._actions.pop(instance_id)[1])
        return due

    # -- helpers ----------------------------------------------------------------------------------------------
    def _all_boots(self) -> list[Boot]:
        return [boot for boots in self._boots.values() for boot in boots] + self._retired

    def _kill(self, boots: list[Boot]) -> None:
        for boot in boots:
            boot.killed = True
            if not boot.settled:  # a settled boot's group is gone, and its number may be another's by now
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(boot.proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + KILL_WAIT
        while True:  # again until none is left: a process may fork or leave its group while the first kill lands
            table = _ProcessTable()
            victims = [proc for boot in boots for proc in table.of(boot)]
            if not victims:
                break
            if time.monotonic() > deadline:
                log.warning("VM processes %s outlived SIGKILL", sorted(proc.handle.pid for proc in victims))
                break
            for proc in victims:
                with contextlib.suppress(psutil.Error):
                    proc.handle.kill()
            time.sleep(0.01)
        for boot in boots:
            with contextlib.suppress(subprocess.TimeoutExpired):
                boot.proc.wait(timeout=KILL_WAIT)

    @staticmethod
    def _base_env(vm_dir: Path) -> dict[str, str]:
        shims = _write_shims(vm_dir)
        path = os.pathsep.join([str(shims), os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"])
        for command in SHUTDOWN_COMMANDS:  # as root the real one ends the machine: it must be out of reach
            found = shutil.which(command, path=path)
            if found != str(shims / command):
                raise RuntimeError(f"{command} resolves to {found}, not the shim in {shims}")
        root = str(vm_dir / "root")
        return {"PATH": path, "HOME": root, "SPOT_ROOT": root, "PYTHONUNBUFFERED": "1"}


def _write_shims(vm_dir: Path) -> Path:
    shims = vm_dir / "bin"
    shims.mkdir(parents=True, exist_ok=True)
    request = shlex.quote(str(vm_dir / SHUTDOWN_FILE))
    for command in SHUTDOWN_COMMANDS:
        shim = shims / command
        shim.write_text(f'#!/bin/sh\n# The guest shuts down: the cloud powers the VM off.\necho "{command} $*" >> '
                        f"{request}\nexit 0\n")
        shim.chmod(0o755)
    return shims
