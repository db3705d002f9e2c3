"""The local backend as a small cloud: idempotent launch, the spot market, env filtering, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from airflow_spot_provider.attempt import InstanceState, Markers, classify
from airflow_spot_provider.backends.base import JobIdentity, LaunchRequest
from airflow_spot_provider.checkpoints.store import CheckpointStore
from airflow_spot_provider.cli import main as cli

from .waiting import wait_for

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def request(tmp: Path, command: list[str], attempt: int = 1, env: dict | None = None) -> LaunchRequest:
    return LaunchRequest(
        identity=JobIdentity("dag", "run", "task", -1, "nonce"), attempt=attempt, command=command, resume_args=[],
        env=env or {}, checkpoint_uri=f"file://{tmp}/store/", checkpoint_pattern=r"(?P<step>\d+)", sync_interval=0.5,
    )


def processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and any(marker in arg for arg in proc.info["cmdline"] or []):
            found.append(proc)
    return found


def test_launch_is_idempotent_by_token(tmp_path, local_backend):
    req = request(tmp_path, SLEEPER)
    first = local_backend.launch(req)
    again = local_backend.launch(req)
    assert first.instance_id == again.instance_id and first.state is InstanceState.RUNNING
    assert local_backend.find(req).instance_id == first.instance_id
    instance_dir = str(local_backend.instances / first.instance_id)
    assert len(processes_with(instance_dir)) == 2  # one host + one agent: a single "VM"
    local_backend.terminate(first.instance_id)
    assert not processes_with(instance_dir)
    facts = asyncio.run(local_backend.describe([first.instance_id]))[first.instance_id]
    assert facts.state is InstanceState.TERMINATED and facts.reason == "Local.UserInitiatedShutdown"


def test_preempt_with_notice_then_kill_and_without_notice(tmp_path, local_backend, capsys):
    store = CheckpointStore.from_uri(f"file://{tmp_path}/store/")
    script = tmp_path / "job.py"
    script.write_text(
        "import os, signal, time, pathlib\n"
        "signal.signal(signal.SIGTERM, lambda *a: pathlib.Path('got-sigterm').write_text('1'))\n"
        "pathlib.Path('ready').write_text('1')\n"
        "time.sleep(60)\n"
    )
    noticed = local_backend.launch(request(tmp_path, [sys.executable, str(script)], attempt=1))
    disk = local_backend.instances / noticed.instance_id / "disk"
    wait_for(lambda: (disk / "ready").exists())  # the handler is installed: the notice cannot race it
    assert cli(["--state-dir", str(local_backend.state_dir), "preempt", noticed.instance_id, "--grace", "1"]) == 0
    assert "with an interruption notice" in capsys.readouterr().out
    wait_for(lambda: (disk / "got-sigterm").exists() and (disk / "spot-notice.json").exists())
    facts = wait_for(lambda: (f := local_backend._facts(noticed.instance_id)).state is InstanceState.TERMINATED and f)
    assert facts.preempted and facts.reason == "Local.SpotInterruption"
    assert classify(facts, Markers(store.read_markers(1))).status.value == "preempted"
    assert "notice" in store.read_markers(1)

    silent = local_backend.launch(request(tmp_path, SLEEPER, attempt=2))
    job = "dag/run/task"
    assert cli(["--state-dir", str(local_backend.state_dir), "preempt", job, "--no-notice"]) == 0
    facts = wait_for(lambda: (f := local_backend._facts(silent.instance_id)).state is InstanceState.TERMINATED and f)
    assert facts.preempted and "notice" not in store.read_markers(2)
    wait_for(lambda: not processes_with(str(local_backend.instances / silent.instance_id)), 60)  # SIGKILL lands async


def test_scheduled_market_preempts_by_itself(tmp_path, state_dir):
    from airflow_spot_provider.backends.local import LocalBackend

    backend = LocalBackend(state_dir=str(state_dir), preempt_after=[0.5], notice_seconds=0.5)
    facts = backend.launch(request(tmp_path, SLEEPER))
    ended = wait_for(lambda: (f := backend._facts(facts.instance_id)).state is InstanceState.TERMINATED and f)
    state = json.loads((backend.instances / facts.instance_id / "state.json").read_text())
    # Reclaimed 0.5 s after it started (notice first, then the kill): never earlier than planned.
    assert ended.preempted and ended.reason == "Local.SpotInterruption"
    assert state["notice_at"] - state["started_at"] >= 0.5


def test_host_death_is_seen_as_lost_and_terminate_still_kills_the_vm(tmp_path, local_backend):
    facts = local_backend.launch(request(tmp_path, SLEEPER))
    state = json.loads((local_backend.instances / facts.instance_id / "state.json").read_text())
    os.kill(state["host_pid"], 9)
    lost = wait_for(lambda: (f := local_backend._facts(facts.instance_id)).state is InstanceState.MISSING and f)
    assert lost.reason == "Local.HostLost" and classify(lost, Markers()).status.value == "lost"
    local_backend.terminate(facts.instance_id)
    wait_for(lambda: not processes_with(str(local_backend.instances / facts.instance_id)))


def test_job_environment_has_no_worker_secrets_unless_listed(tmp_path, local_backend, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "leak-me-not")
    monkeypatch.setenv("AIRFLOW_CONN_DB", "postgres://user:secret@host/db")
    dump = tmp_path / "env.json"
    command = [sys.executable, "-c", f"import json, os; open({str(dump)!r}, 'w').write(json.dumps(dict(os.environ)))"]
    local_backend.launch(request(tmp_path, command, env={"WANTED": "yes"}))
    env = json.loads(wait_for(lambda: dump.exists() and dump.read_text()))
    assert "AWS_SECRET_ACCESS_KEY" not in env and "AIRFLOW_CONN_DB" not in env
    assert env["WANTED"] == "yes" and env["SPOT_ATTEMPT"] == "1"
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)


def test_status_and_sweep_without_airflow_touches_only_finished_disks(tmp_path, local_backend, capsys):
    facts = local_backend.launch(request(tmp_path, SLEEPER))
    state = ["--state-dir", str(local_backend.state_dir)]
    assert cli([*state, "status"]) == 0
    assert facts.instance_id in capsys.readouterr().out
    cli([*state, "sweep", "--no-airflow", "--delete"])  # without Airflow's word a running attempt stays
    assert "nothing to sweep" in capsys.readouterr().out
    assert local_backend._facts(facts.instance_id).state is InstanceState.RUNNING
    local_backend.terminate(facts.instance_id)
    assert cli([*state, "sweep", "--no-airflow"]) == 0
    assert "would delete disk of attempt" in capsys.readouterr().out
    assert cli([*state, "sweep", "--no-airflow", "--delete"]) == 0
    cli([*state, "sweep", "--no-airflow"])
    assert "nothing to sweep" in capsys.readouterr().out


def test_sweep_asks_airflow_and_spares_live_jobs(tmp_path, local_backend, capsys, airflow_db):
    from airflow_spot_provider.sweep import find_leftovers, sweep

    running = local_backend.launch(request(tmp_path, SLEEPER))
    other = local_backend.launch(LaunchRequest(**{**request(tmp_path, SLEEPER).__dict__,
                                                 "identity": JobIdentity("dag", "run", "other", -1, "n")}))
    state = ["--state-dir", str(local_backend.state_dir)]
    # No scheduler or triggerer heartbeats in this metadata DB: Airflow is down, every job is a leftover.
    assert cli([*state, "sweep"]) == 0
    out = capsys.readouterr().out
    assert out.count("would delete running attempt") == 2 and "Airflow is not running" in out
    # The selection follows Airflow's answer per job: the live one is spared, the other removed.
    verdicts = {"task": (True, ""), "other": (False, "its task is failed")}
    leftovers = find_leftovers(local_backend, lambda key: verdicts[key.task_id])
    assert [x.resource.instance_id for x in leftovers] == [other.instance_id]
    assert sweep(local_backend, lambda key: verdicts[key.task_id], True, print) == 1
    assert local_backend._facts(other.instance_id).state is InstanceState.TERMINATED
    assert local_backend._facts(running.instance_id).state is InstanceState.RUNNING
    assert not find_leftovers(local_backend, lambda key: verdicts[key.task_id])
    assert JobIdentity.from_tags({"spot-dag-id": "d"}) is None


def test_random_market_is_reproducible_with_a_seed():
    from airflow_spot_provider.backends.local_market import Preemption, scheduled_preemption

    market = {"preemption_rate_per_hour": 3600.0, "seed": 42, "notice_seconds": 2}
    draws = [scheduled_preemption(market, attempt) for attempt in (1, 2, 3)]
    assert draws == [scheduled_preemption(market, attempt) for attempt in (1, 2, 3)]
    assert len({d.after for d in draws}) == 3 and all(d.grace == 2 for d in draws)
    assert scheduled_preemption({**market, "seed": 43}, 1) != draws[0]
    assert scheduled_preemption({"preempt_after": [None, 5]}, 1) is None
    assert scheduled_preemption({"preempt_after": [None, {"after": 5, "notice_seconds": 0}]}, 2) == Preemption(0.0, 5.0)
    assert scheduled_preemption({"preempt_after": [{"at_step": 300}]}, 1) == Preemption(5.0, at_step=300)


def test_market_preempts_at_a_checkpoint_step_whatever_the_pace(tmp_path):
    """``at_step`` reclaims an attempt once its disk holds that checkpoint: a plan that no machine load moves."""
    from airflow_spot_provider.backends.local import LocalBackend

    backend = LocalBackend(state_dir=str(tmp_path / "state"), preempt_after=[{"at_step": 3, "notice_seconds": 30}])
    gate = tmp_path / "gate"
    script = ("import os, pathlib, time\n"
              "d = pathlib.Path(os.environ['SPOT_CHECKPOINT_DIR'])\n"
              "for step in (1, 2):\n"
              "    (d / f'ckpt-{step}').write_text('x')\n"
              f"while not os.path.exists({str(gate)!r}):\n"  # the test decides when step 3 comes
              "    time.sleep(0.05)\n"
              "(d / 'ckpt-3').write_text('x')\n"
              "time.sleep(600)\n")
    facts = backend.launch(request(tmp_path, [sys.executable, "-c", script]))
    notice = backend.instances / facts.instance_id / "metadata" / "spot-notice.json"
    disk = backend.instances / facts.instance_id / "disk" / "checkpoints"
    wait_for(lambda: (disk / "ckpt-2").exists(), 60)
    assert not notice.exists()  # steps 1 and 2 are below the plan, however long they took
    gate.touch()
    wait_for(notice.exists, 60)
    assert (disk / "ckpt-3").exists()
    backend.terminate(facts.instance_id)


def test_a_checkpoint_still_being_written_does_not_reach_the_plans_step(tmp_path):
    """A hidden or ``.tmp`` name with the step in it is a checkpoint only half on the disk: reclaiming the attempt
    then would leave only the previous one to backup-save, so ``at_step`` waits for the real name."""
    import json

    from airflow_spot_provider.backends.local_market import Host, Preemption

    instance = tmp_path / "i-local-0"
    (instance / "disk" / "checkpoints").mkdir(parents=True)
    (instance / "instance.json").write_text(json.dumps({}))
    (instance / "agent.json").write_text(json.dumps({"checkpoint_pattern": r"(?P<step>\d+)(?!.*\d)"}))
    host, plan = Host(instance), Preemption(0.0, at_step=200)
    checkpoints = instance / "disk" / "checkpoints"
    (checkpoints / "ckpt-00000150.pt").write_text("x")
    (checkpoints / ".ckpt-00000200.pt.abcdefgh.tmp").write_text("half")
    (checkpoints / "ckpt-00000200.pt.tmp").write_text("half")
    assert not host._reached(plan, 0.0, 0.0)
    (checkpoints / "ckpt-00000200.pt").write_text("x")
    assert host._reached(plan, 0.0, 0.0)


LAUNCHER = """\
import sys
from airflow_spot_provider.backends.base import JobIdentity, LaunchRequest
from airflow_spot_provider.backends.local import LocalBackend
backend = LocalBackend(state_dir={state!r}, boot_seconds=float(sys.argv[2]))
backend.launch(LaunchRequest(identity=JobIdentity("d", "r", sys.argv[1], -1, "n"), attempt=1,
               command=[sys.executable, "-c", "import time; time.sleep(600)"], resume_args=[], env={{}},
               checkpoint_uri={store!r}, checkpoint_pattern=r"(?P<step>\\d+)", sync_interval=1))
"""


def test_a_killed_launcher_leaves_no_instance_or_one_that_runs(tmp_path):
    """Like a cloud's accepted request: a launcher killed at any moment leaves nothing, or a VM that boots and
    runs; never an instance whose host never started. A relaunch with the same token finds it or starts it."""
    state = tmp_path / "state"
    script = tmp_path / "launch.py"
    script.write_text(LAUNCHER.format(state=str(state), store=f"file://{tmp_path}/store/"))
    from airflow_spot_provider.backends.local import LocalBackend

    backend = LocalBackend(state_dir=str(state))
    # Killed while the accepted VM boots: the instance stays and comes up running.
    launcher = subprocess.Popen([sys.executable, str(script), "booting", "2"])
    instance = wait_for(lambda: next(iter(backend.instances.glob("i-local-*")), None), 60)
    launcher.kill()
    launcher.wait()
    assert wait_for(lambda: backend._facts(instance.name).state is not InstanceState.PENDING, 60)
    assert backend._facts(instance.name).state is InstanceState.RUNNING
    backend.terminate(instance.name)
    # Killed at many moments of the launch: each time nothing is left, or an instance that runs.
    staging = backend.instances / ".launching"
    for i in range(12):
        launcher = subprocess.Popen([sys.executable, str(script), f"kill-{i}", "0"])
        wait_for(lambda p=launcher: (staging.is_dir() and any(staging.iterdir())) or p.poll() is not None, 60,
                 interval=0.005)
        time.sleep(0.01 * i)  # a spread of kill points, from staging to running: any of them must be safe
        launcher.kill()
        launcher.wait()
        req = LaunchRequest(identity=JobIdentity("d", "r", f"kill-{i}", -1, "n"), attempt=1, command=SLEEPER,
                            resume_args=[], env={}, checkpoint_uri=f"file://{tmp_path}/store/",
                            checkpoint_pattern=r"(?P<step>\d+)", sync_interval=1)
        found = backend.find(req)
        if found is not None:
            assert wait_for(lambda f=found: backend._facts(f.instance_id).state is not InstanceState.PENDING, 60)
            assert backend._facts(found.instance_id).state is InstanceState.RUNNING, backend._facts(found.instance_id)
        relaunched = backend.launch(req)  # reconnects, or launches the one that was never accepted
        assert relaunched.state is InstanceState.RUNNING
        assert found is None or relaunched.instance_id == found.instance_id
        backend.terminate(relaunched.instance_id)
    assert [p.name for p in staging.iterdir()] == []


def test_sweep_operator_in_a_dag_asks_airflow_through_the_task_sdk(tmp_path, local_backend, airflow_db):
    from .e2e import run_dag

    orphan = local_backend.launch(request(tmp_path, SLEEPER))  # its DAG run does not exist in Airflow
    result = run_dag({"dag_id": "e2e_sweep", "sweep": {
        "backend_options": {"state_dir": str(local_backend.state_dir)}, "delete": True}}, tmp_path)
    assert result["state"] == "success"
    assert result["summary"]["found"] == 1 and "its task is gone" in result["summary"]["lines"][0]
    assert local_backend._facts(orphan.instance_id).state is InstanceState.TERMINATED
    assert not (local_backend.instances / orphan.instance_id / "disk").exists()
