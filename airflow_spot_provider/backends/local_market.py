"""The local backend's "hypervisor": one detached process per attempt, playing the cloud's part.

It starts the agent in its own process group (the VM), records the VM's state the way a cloud
would (with a reason), and runs the simulated spot market: at the scheduled or requested moment it
publishes an interruption notice (the local "metadata server" file), waits the grace period, then
kills the whole process group. Run as ``python -m airflow_spot_provider.backends.local_market DIR``.
No Airflow import: it must start fast and survive the worker that launched it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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


def scheduled_preemption(market: dict[str, Any], attempt: int) -> tuple[float, float] | None:
    """(seconds after start, notice grace) at which the market reclaims this attempt, or None.

    ``preempt_after`` items are seconds, or ``{"after": s, "notice_seconds": g}`` to vary the grace
    per attempt (0: the notice comes too late to act on, as field reports describe).
    """
    grace = float(market.get("notice_seconds", 5.0))
    after = market.get("preempt_after") or []
    if attempt - 1 < len(after) and after[attempt - 1] is not None:
        item = after[attempt - 1]
        if isinstance(item, dict):
            return float(item["after"]), float(item.get("notice_seconds", grace))
        return float(item), grace
    rate = float(market.get("preemption_rate_per_hour") or 0)
    if rate > 0:
        return random.Random(f"{market.get('seed', 0)}:{attempt}").expovariate(rate / 3600.0), grace
    return None


class Host:
    def __init__(self, instance_dir: Path) -> None:
        self.dir = instance_dir
        self.spec = json.loads((instance_dir / "instance.json").read_text())
        self.state_path = instance_dir / "state.json"
        self.control = instance_dir / "control"
        self.notice_path = instance_dir / "metadata" / "spot-notice.json"
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
        self._save(state="terminated", reason=reason, preempted=preempted, ended_at=time.time(),
                   agent_exit_code=agent.returncode)

    def run(self) -> None:
        disk = self.dir / "disk"
        disk.mkdir(exist_ok=True)
        self.notice_path.parent.mkdir(exist_ok=True)
        self.control.mkdir(exist_ok=True)
        with open(self.dir / "console.log", "ab", buffering=0) as console:
            agent = subprocess.Popen(
                [sys.executable, "-m", "airflow_spot_provider.agent", str(self.dir / "agent.json")],
                cwd=disk, env=self.spec["env"], stdin=subprocess.DEVNULL, stdout=console,
                stderr=subprocess.STDOUT, start_new_session=True,  # the VM: one process group
            )
        started = time.time()
        self._save(state="running", host_pid=os.getpid(), agent_pgid=agent.pid, started_at=started)
        market = self.spec.get("market_simulation") or {}
        schedule = scheduled_preemption(market, self.spec["attempt"]) if self.spec["market"] == "spot" else None
        preempt_at = started + schedule[0] if schedule else None
        deadline: float | None = None
        while True:
            now = time.time()
            if agent.poll() is not None:
                # The agent finished and the VM powers itself off; after a notice, the market had it anyway.
                noticed = deadline is not None
                self._kill(agent.pid)  # powering off ends whatever the job left running
                self._save(state="terminated", reason=REASON_PREEMPTED if noticed else REASON_SHUTDOWN,
                           preempted=noticed, ended_at=now, agent_exit_code=agent.returncode)
                return
            if (self.control / "terminate").exists():
                self._end(agent, REASON_TERMINATED, preempted=False)
                return
            request = read_json(self.control / "preempt")
            if request is None and preempt_at is not None and now >= preempt_at and deadline is None:
                request = {"notice": True, "grace": schedule[1]}
            if request is not None and deadline is None:
                (self.control / "preempt").unlink(missing_ok=True)
                if not request.get("notice", True):
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


def main(argv: list[str]) -> None:
    instance_dir = Path(argv[-1])
    if "--detach" in argv and os.fork() > 0:
        os._exit(0)  # the launcher reaps this parent at once; the host is adopted by init
    try:
        Host(instance_dir).run()
    except Exception as err:  # record why the "VM" died instead of vanishing silently
        state = read_json(instance_dir / "state.json") or {}
        state.update(state="terminated", reason=f"Local.HostError: {err}", preempted=False, ended_at=time.time())
        write_json(instance_dir / "state.json", state)
        raise


if __name__ == "__main__":
    main(sys.argv[1:])
