"""The local backend's "hypervisor": one detached process per attempt, playing the cloud's part.

It starts the agent in its own process group (the VM), records the VM's state the way a cloud
would (with a reason), and runs the simulated spot market: at the scheduled or requested moment it
publishes an interruption notice (the local "metadata server" file), waits the grace period, then
kills the whole process group. Started as ``python -m airflow_spot_provider.backends.local_market
--launch STAGING DIR`` (see :func:`launch`).
No Airflow import: it must start fast and survive the worker that launched it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_spot_provider.attempt import InstanceState
from airflow_spot_provider.checkpoints.latest import checkpoint_step, compile_pattern, is_temporary_name

TERMINATED = InstanceState.TERMINATED.value

TICK = 0.1
REASON_PREEMPTED = "Local.SpotInterruption"
REASON_SHUTDOWN = "Local.InstanceInitiatedShutdown"
REASON_TERMINATED = "Local.UserInitiatedShutdown"


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


@dataclass(frozen=True)
class Preemption:
    """When the market reclaims an attempt: ``after`` seconds from its start, or once its disk holds a
    checkpoint of step ``at_step`` or more (reproducible whatever the machine's load); ``grace`` between
    the notice and the kill."""

    grace: float
    after: float | None = None
    at_step: int | None = None


def scheduled_preemption(market: dict[str, Any], attempt: int) -> Preemption | None:
    """The market's plan for this attempt, or None.

    ``preempt_after`` items are seconds, or ``{"after": s | "at_step": n, "notice_seconds": g}`` to vary
    the grace per attempt (0: the notice comes too late to act on, as field reports describe).
    """
    grace = float(market.get("notice_seconds", 5.0))
    after = market.get("preempt_after") or []
    if attempt - 1 < len(after) and after[attempt - 1] is not None:
        item = after[attempt - 1]
        if not isinstance(item, dict):
            return Preemption(grace, after=float(item))
        grace = float(item.get("notice_seconds", grace))
        if "at_step" in item:
            return Preemption(grace, at_step=int(item["at_step"]))
        return Preemption(grace, after=float(item["after"]))
    rate = float(market.get("preemption_rate_per_hour") or 0)
    if rate > 0:
        return Preemption(grace, after=random.Random(f"{market.get('seed', 0)}:{attempt}").expovariate(rate / 3600.0))
    return None


class Host:
    def __init__(self, instance_dir: Path) -> None:
        self.dir = instance_dir
        self.spec = json.loads((instance_dir / "instance.json").read_text())
        self.state_path = instance_dir / "state.json"
        self.control = instance_dir / "control"
        self.notice_path = instance_dir / "metadata" / "spot-notice.json"
        self.agent = json.loads((instance_dir / "agent.json").read_text())
        self.state: dict[str, Any] = read_json(self.state_path) or {}

    def _save(self, **changes: Any) -> None:
        self.state.update(changes)
        write_json(self.state_path, self.state)

    def _kill(self, pgid: int) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _end(self, agent: subprocess.Popen, reason: str, preempted: bool) -> None:
        self._kill(agent.pid)
        agent.wait()
        self._save(state=TERMINATED, reason=reason, reclaimed=preempted, ended_at=time.time(),
                   agent_exit_code=agent.returncode)

    def _boot(self, seconds: float) -> bool:
        """The VM boots (``boot_seconds``, state ``pending``); False when it is terminated meanwhile."""
        booted_at = time.time() + seconds
        while time.time() < booted_at:
            if (self.control / "terminate").exists() or (self.control / "preempt").exists():
                preempted = not (self.control / "terminate").exists()
                self._save(state=TERMINATED, reason=REASON_PREEMPTED if preempted else REASON_TERMINATED,
                           reclaimed=preempted, ended_at=time.time())
                return False
            time.sleep(TICK)
        return True

    def _reached(self, plan: Preemption, started: float, now: float) -> bool:
        if plan.after is not None:
            return now >= started + plan.after
        pattern = compile_pattern(self.agent["checkpoint_pattern"])
        try:
            names = os.listdir(self.dir / "disk" / "checkpoints")
        except FileNotFoundError:
            return False
        # A checkpoint being written (a hidden or ``.tmp`` name) is not there yet: it may be only half on the disk.
        return any((step := checkpoint_step(name, pattern)) is not None and step >= plan.at_step
                   for name in names if not is_temporary_name(name))

    def run(self) -> None:
        disk = self.dir / "disk"
        disk.mkdir(exist_ok=True)
        self.notice_path.parent.mkdir(exist_ok=True)
        self.control.mkdir(exist_ok=True)
        market = self.spec.get("market_simulation") or {}
        if not self._boot(float(market.get("boot_seconds", 0))):
            return
        with open(self.dir / "console.log", "ab", buffering=0) as console:
            agent = subprocess.Popen(
                [sys.executable, "-m", "airflow_spot_provider.agent", str(self.dir / "agent.json")],
                cwd=disk, env=self.spec["env"], stdin=subprocess.DEVNULL, stdout=console,
                stderr=subprocess.STDOUT, start_new_session=True,  # the VM: one process group
            )
        started = time.time()
        self._save(state=InstanceState.RUNNING.value, host_pid=os.getpid(), agent_pgid=agent.pid, started_at=started)
        plan = scheduled_preemption(market, self.spec["attempt"]) if self.spec["market"] == "spot" else None
        deadline: float | None = None
        while True:
            now = time.time()
            if agent.poll() is not None:
                # The agent finished and the VM powers itself off; after a notice, the market had it anyway.
                noticed = deadline is not None
                self._kill(agent.pid)  # powering off ends whatever the job left running
                self._save(state=TERMINATED, reason=REASON_PREEMPTED if noticed else REASON_SHUTDOWN,
                           reclaimed=noticed, ended_at=now, agent_exit_code=agent.returncode)
                return
            if (self.control / "terminate").exists():
                self._end(agent, REASON_TERMINATED, preempted=False)
                return
            request = read_json(self.control / "preempt")
            if request is None and plan is not None and deadline is None and self._reached(plan, started, now):
                request = {"warn": True, "grace": plan.grace}
            if request is not None and deadline is None:
                (self.control / "preempt").unlink(missing_ok=True)
                if not request.get("warn", True):
                    self._end(agent, REASON_PREEMPTED, preempted=True)
                    return
                grace = float(request.get("grace", market.get("notice_seconds", 5.0)))
                deadline = now + grace
                write_json(self.notice_path, {"action": "terminate", "time": now, "deadline": deadline})
                self._save(notice_at=now)
            if deadline is not None and now >= deadline:
                self._end(agent, REASON_PREEMPTED, preempted=True)
                return
            time.sleep(TICK)


def claim(staging: Path, instance_dir: Path) -> bool:
    """Accept the launch request: move the staged instance into place (atomic). False when a concurrent
    launch of the same token was accepted first."""
    write_json(staging / "state.json", {"state": InstanceState.PENDING.value, "host_pid": os.getpid()})
    try:
        os.rename(staging, instance_dir)
    except OSError:
        if not instance_dir.is_dir():
            raise
        shutil.rmtree(staging, ignore_errors=True)
        return False
    return True


def launch(staging: Path, instance_dir: Path) -> None:
    """``--launch STAGING DIR``: fork the host; this process exits once the host has claimed the instance
    (0), found it claimed already (0), or died before either (1). The host is adopted by init."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as answer:
            os._exit(0 if answer.read() in (b"accepted", b"duplicate") else 1)
    os.close(read_end)
    try:
        accepted = claim(staging, instance_dir)
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.write(write_end, b"accepted" if accepted else b"duplicate")
    os.close(write_end)
    if accepted:
        run_host(instance_dir)


def run_host(instance_dir: Path) -> None:
    try:
        Host(instance_dir).run()
    except Exception as err:  # record why the "VM" died instead of vanishing silently
        state = read_json(instance_dir / "state.json") or {}
        state.update(state=TERMINATED, reason=f"Local.HostError: {err}", reclaimed=False, ended_at=time.time())
        write_json(instance_dir / "state.json", state)
        raise


def main(argv: list[str]) -> None:
    if argv[0] == "--launch":
        launch(Path(argv[1]), Path(argv[2]))
    else:
        run_host(Path(argv[-1]))


if __name__ == "__main__":
    main(sys.argv[1:])
