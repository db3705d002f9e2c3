"""The local backend: a real, small cloud on one machine (the embedded default).

Each attempt is a detached process tree with its own working directory (its "disk"), supervised by
a host process (:mod:`local_market`) that records state the way a cloud does and simulates the spot
market. Everything is visible to any process on the machine (worker, triggerer, CLI) through the
state directory::

    <state_dir>/instances/<instance-id>/
        instance.json  agent.json   # what was launched (no secrets: the job env is filtered)
        state.json                   # written by the host: state, reason, pids, times
        disk/checkpoints/            # the job's checkpoint directory; survives the "VM"
        metadata/spot-notice.json    # the interruption notice (the agent's notice source)
        control/{preempt,terminate}  # requests to the host
        console.log                  # agent + job output
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from airflow_spot_provider.attempt import InstanceFacts, InstanceState, Marker
from airflow_spot_provider.backends.base import (
    BackupSaveRequest,
    BackupSaveResult,
    CloudResource,
    LaunchError,
    LaunchRequest,
    SpotBackend,
)
from airflow_spot_provider.backends.local_market import REASON_SHUTDOWN, read_json, write_json
from airflow_spot_provider.checkpoints.objectstorage import store_for
from airflow_spot_provider.checkpoints.sync import DirectorySync
from airflow_spot_provider.spec import check_keys, number

#: $/hour, shaped like real spot/on-demand pairs (spot ≈ 30–40 % of on-demand).
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "local.small": {"spot": 0.0125, "on_demand": 0.0416},
    "local.standard": {"spot": 0.12, "on_demand": 0.384},
    "local.gpu": {"spot": 0.39, "on_demand": 1.006},
}
DEFAULT_TYPE = "local.standard"
#: Options the host process reads to simulate the spot market for an attempt.
MARKET_OPTIONS = ("preempt_after", "preemption_rate_per_hour", "seed", "notice_seconds", "boot_seconds")
OPTIONS = ("state_dir", *MARKET_OPTIONS, "prices")
#: Variables a local job gets from the worker by default. Nothing else (no AIRFLOW_CONN_*, AWS_*,
#: GOOGLE_*): a job sees a secret only when the DAG author lists it in ``pass_env``.
BASE_ENV = ("HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER")
LAUNCH_LOCK = ".launch.lock"


def default_state_dir() -> str:
    if explicit := os.environ.get("AIRFLOW_SPOT_LOCAL_DIR"):
        return explicit
    airflow_home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    return os.path.join(airflow_home, "spot-local")


def validate_options(options: dict[str, Any]) -> dict[str, Any]:
    check_keys("backend_options", options, OPTIONS)
    after = options.get("preempt_after")
    if after is not None:
        if not isinstance(after, (list, tuple)):
            raise ValueError("backend_options.preempt_after: must be a list of seconds (one per attempt)")
        for i, value in enumerate(after):
            field = f"backend_options.preempt_after[{i}]"
            if isinstance(value, dict):
                check_keys(field, value, ("after", "at_step", "notice_seconds"))
                if ("after" in value) == ("at_step" in value):
                    raise ValueError(f"{field}: needs exactly one of 'after' (seconds) and 'at_step' (a step)")
                if "after" in value:
                    number(f"{field}.after", value["after"])
                else:
                    number(f"{field}.at_step", value["at_step"], integer=True)
                number(f"{field}.notice_seconds", value.get("notice_seconds", 0))
            else:
                number(field, value, allow_none=True)
    number("backend_options.preemption_rate_per_hour", options.get("preemption_rate_per_hour", 0))
    number("backend_options.seed", options.get("seed", 0), integer=True)
    number("backend_options.notice_seconds", options.get("notice_seconds", 5.0))
    number("backend_options.boot_seconds", options.get("boot_seconds", 0))
    prices = options.get("prices") or {}
    if not isinstance(prices, dict):
        raise ValueError("backend_options.prices: must be a dict {type: {'spot': $/h, 'on_demand': $/h}}")
    for name, pair in prices.items():
        if not isinstance(pair, dict) or set(pair) != {"spot", "on_demand"}:
            raise ValueError(f"backend_options.prices[{name!r}]: must be {{'spot': $/h, 'on_demand': $/h}}")
        for key, value in pair.items():
            number(f"backend_options.prices[{name!r}].{key}", value)
    return options


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class LocalBackend(SpotBackend):
    name = "local"

    def __init__(self, conn_id: str | None = None, **options: Any) -> None:
        validate_options(options)
        super().__init__(conn_id=conn_id, **options)
        self.state_dir = Path(options.get("state_dir") or default_state_dir())
        self.instances = self.state_dir / "instances"
        self.prices = {**DEFAULT_PRICES, **(options.get("prices") or {})}

    def validate_machine(self, machine: Any) -> None:
        for i, name in enumerate(machine.instance_types):
            if name not in self.prices:
                raise ValueError(f"machine.instance_types[{i}]: unknown local type {name!r}; "
                                 f"known: {', '.join(sorted(self.prices))} (add one with backend_options.prices)")

    def poll_key(self) -> tuple[str, ...]:
        return (self.name, str(self.state_dir))

    # -- helpers -------------------------------------------------------------------------------
    def instance_id(self, token: str) -> str:
        return f"i-local-{token[:16]}"

    def _dir(self, instance_id: str) -> Path:
        if "/" in instance_id or instance_id in ("", ".", ".."):
            raise ValueError(f"not a local instance id: {instance_id!r}")
        return self.instances / instance_id

    def job_env(self, request_env: dict[str, str]) -> dict[str, str]:
        env = {name: os.environ[name] for name in BASE_ENV if name in os.environ}
        # The local "image" is this Python environment: its bin directory comes first on PATH.
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/bin:/bin")])
        env.update(request_env)
        return env

    # -- worker side ---------------------------------------------------------------------------
    def launch(self, request: LaunchRequest) -> InstanceFacts:
        instance_id = self.instance_id(request.token)
        path = self._dir(instance_id)
        if path.exists():
            return self._wait_started(instance_id)
        # Everything is written to a staging directory first; the host claims it by renaming it to the
        # instance directory (the idempotency record). So a launcher killed at any point leaves either no
        # instance, or one whose host runs, like a cloud's accepted request; never a half-made one.
        staging, lock = self._staging(instance_id)
        instance_type = request.instance_type or DEFAULT_TYPE
        price = self.prices.get(instance_type, self.prices[DEFAULT_TYPE])
        env = self.job_env(request.env)
        agent = request.agent_config(instance_id=instance_id, work_dir=str(path / "disk"), env=env, notice={
            "source": "file", "path": str(path / "metadata" / "spot-notice.json")})
        (staging / "agent.json").write_text(agent.to_json())
        write_json(staging / "instance.json", {
            "instance_id": instance_id, "token": request.token, "attempt": request.attempt,
            "tags": request.identity.tags(request.attempt), "identity": request.identity.to_dict(),
            "instance_type": instance_type, "zone": request.zone or "local-1a", "market": request.market,
            "price_per_hour": price["spot" if request.market == "spot" else "on_demand"],
            "on_demand_price_per_hour": price["on_demand"], "launched_at": time.time(), "env": env,
            "market_simulation": {k: self.options[k] for k in MARKET_OPTIONS if k in self.options},
        })
        # The launcher's child forks the host and exits once the host has claimed the staging directory
        # (or found the instance claimed by a concurrent launch), so no zombie is left and no wait is guessed.
        # The staging lock goes with it: while any process of this launch lives, no other launch removes it.
        with lock:
            answer = subprocess.run(
                [sys.executable, "-m", "airflow_spot_provider.backends.local_market", "--launch", str(staging),
                 str(path)], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, check=False, pass_fds=(lock.fileno(),),
            )
        if not path.exists():
            shutil.rmtree(staging, ignore_errors=True)
            raise LaunchError("Local.HostError", f"the host process of {instance_id} did not start "
                              f"(exit code {answer.returncode})", move_on=False)
        return self._wait_started(instance_id)

    def _staging(self, instance_id: str) -> tuple[Path, IO[bytes]]:
        """A fresh staging directory for one launch call, and its lock (held by the launcher, then by the
        host it starts). Staging directories of this instance that nobody holds are from launches that died
        before their host claimed them: they are removed."""
        launching = self.instances / ".launching"
        launching.mkdir(parents=True, exist_ok=True)
        for old in launching.glob(f"{instance_id}.*"):
            try:
                with open(old / LAUNCH_LOCK, "rb") as held:
                    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its launch is alive
            except FileNotFoundError:
                pass  # claimed meanwhile (or never locked): removing a vanished path is a no-op
            shutil.rmtree(old, ignore_errors=True)
        staging = launching / f"{instance_id}.{secrets.token_hex(6)}"
        staging.mkdir()
        lock = open(staging / LAUNCH_LOCK, "wb")  # noqa: SIM115 - handed to the host process
        fcntl.flock(lock, fcntl.LOCK_EX)
        return staging, lock

    def _wait_started(self, instance_id: str) -> InstanceFacts:
        """The launch returns once the VM runs (after its ``boot_seconds``), or once its host is gone."""
        while True:
            facts = self._facts(instance_id)
            if facts.state is not InstanceState.PENDING:
                return facts
            time.sleep(0.05)

    def find(self, request: LaunchRequest) -> InstanceFacts | None:
        instance_id = self.instance_id(request.token)
        return self._facts(instance_id) if self._dir(instance_id).exists() else None

    def _facts(self, instance_id: str) -> InstanceFacts:
        path = self._dir(instance_id)
        spec = read_json(path / "instance.json")
        state = read_json(path / "state.json") or {}
        if spec is None:
            return InstanceFacts(instance_id, InstanceState.MISSING, reason="Local.NoSuchInstance")
        raw = state.get("state", InstanceState.PENDING.value)
        reason = state.get("reason", "")
        if raw in (InstanceState.PENDING, InstanceState.RUNNING) and state.get("host_pid") \
                and not _alive(state["host_pid"]):
            raw, reason = InstanceState.MISSING.value, "Local.HostLost"
        return InstanceFacts(
            instance_id=instance_id, state=InstanceState(raw), reason=reason,
            preempted=bool(state.get("reclaimed")), guest_shutdown=reason == REASON_SHUTDOWN,
            zone=spec["zone"], instance_type=spec["instance_type"],
            market=spec["market"], launched_at=spec["launched_at"],
            ended_at=state.get("ended_at"), price_per_hour=spec["price_per_hour"],
            on_demand_price_per_hour=spec["on_demand_price_per_hour"],
        )

    def terminate(self, instance_id: str) -> None:
        path = self._dir(instance_id)
        state = read_json(path / "state.json")
        if state is None or state.get("state") == InstanceState.TERMINATED:
            return
        (path / "control").mkdir(exist_ok=True)
        (path / "control" / "terminate").touch()
        deadline = time.monotonic() + 10
        while _alive(state.get("host_pid")) and time.monotonic() < deadline:
            time.sleep(0.05)
        state = read_json(path / "state.json") or {}
        if state.get("state") != InstanceState.TERMINATED:  # the host is gone: kill the "VM" ourselves
            if state.get("agent_pgid"):
                try:
                    os.killpg(state["agent_pgid"], 9)
                except ProcessLookupError:
                    pass
            state.update(state=InstanceState.TERMINATED.value, reason=state.get("reason") or "Local.HostLost",
                         ended_at=time.time())
            write_json(path / "state.json", state)

    def preempt(self, instance_id: str, notice: bool = True, grace: float | None = None) -> None:
        """Ask the simulated market to reclaim this attempt now (the ``airflow-spot preempt`` chaos hook)."""
        path = self._dir(instance_id)
        if not (path / "state.json").exists():
            raise ValueError(f"no local instance {instance_id}")
        request: dict[str, Any] = {"warn": notice}
        if grace is not None:
            request["grace"] = grace
        (path / "control").mkdir(exist_ok=True)
        write_json(path / "control" / "preempt", request)

    def backup_save(self, request: BackupSaveRequest) -> BackupSaveResult:
        disk = self._dir(request.instance_id) / "disk" / "checkpoints"
        if not disk.is_dir():
            return BackupSaveResult(skipped=True, reason="the attempt's disk is already released")
        store = store_for(request.checkpoint_uri, self.conn_id)
        result = DirectorySync(disk, store, request.attempt, request.checkpoint_pattern).sync(Marker.BACKUP_SAVE.value)
        return BackupSaveResult(uploaded=result.uploaded, bytes=result.bytes, latest=result.latest)

    def release(self, instance_id: str, token: str | None = None) -> None:
        shutil.rmtree(self._dir(instance_id) / "disk", ignore_errors=True)

    def list_instances(self) -> list[CloudResource]:
        found = []
        for path in sorted(self.instances.glob("i-local-*")) if self.instances.is_dir() else []:
            spec = read_json(path / "instance.json")
            if spec is not None:  # the disk is the instance's own directory: it goes with the instance id
                found.append(CloudResource(tags=spec["tags"], facts=self._facts(path.name),
                                           disk_id=path.name if (path / "disk").is_dir() else None))
        return found

    def console_output(self, instance_id: str, tail: int = 20) -> list[str]:
        try:
            lines = (self._dir(instance_id) / "console.log").read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        return lines[-tail:]

    # -- triggerer side ------------------------------------------------------------------------
    async def describe(self, instance_ids: list[str]) -> dict[str, InstanceFacts]:
        return await asyncio.to_thread(lambda: {i: self._facts(i) for i in instance_ids})
