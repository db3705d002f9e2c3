"""Each attempt's own log: the job's output and the agent's lines reach the store while the job runs and at its end,
bounded to the last MiB, and the console still gets the job's output."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from airflow_spot_provider.agent import attempt_log
from airflow_spot_provider.agent.config import AgentConfig
from airflow_spot_provider.agent.runner import main
from airflow_spot_provider.checkpoints.store import CheckpointStore

from .waiting import wait_for


def write_config(tmp_path: Path, script: str) -> Path:
    config = AgentConfig(attempt=1, instance_id="i-log", command=[sys.executable, "-c", textwrap.dedent(script)],
                         checkpoint_uri=f"file://{tmp_path / 'store'}", work_dir=str(tmp_path / "disk"),
                         checkpoint_pattern=r"(?P<step>\d+)", sync_interval=0.2)
    path = tmp_path / "agent.json"
    path.write_text(config.to_json())
    return path


def run_agent(tmp_path: Path, script: str) -> tuple[int, CheckpointStore]:
    store = CheckpointStore.from_uri(f"file://{tmp_path / 'store'}")
    return main(str(write_config(tmp_path, script)), store), store


def test_the_jobs_output_and_the_agents_lines_are_in_the_store_and_on_the_console(tmp_path, capfd):
    code, store = run_agent(tmp_path, """
        import sys
        print("epoch 1 loss 0.5", flush=True)
        print("a warning on stderr", file=sys.stderr, flush=True)
        sys.exit(3)
    """)
    assert code == 3
    text = store.read_attempt_log(1)
    assert "epoch 1 loss 0.5" in text and "a warning on stderr" in text
    assert "[agent]" in text and "job exited with code 3" in text
    assert "epoch 1 loss 0.5" in capfd.readouterr().out  # the VM's console still gets it


def test_the_log_is_uploaded_while_the_job_runs(tmp_path):
    gate = tmp_path / "gate"
    path = write_config(tmp_path, f"""
        import os, time
        print("started training", flush=True)
        while not os.path.exists({str(gate)!r}):
            time.sleep(0.05)
    """)
    agent = subprocess.Popen([sys.executable, "-m", "airflow_spot_provider.agent", str(path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = CheckpointStore.from_uri(f"file://{tmp_path / 'store'}")
    try:
        wait_for(lambda: "started training" in (store.read_attempt_log(1) or ""), 60,
                 what="the running job's output in the store")
    finally:
        gate.touch()
        assert agent.wait(60) == 0


def test_the_store_keeps_the_end_of_a_long_log(tmp_path, monkeypatch):
    monkeypatch.setattr(attempt_log, "UPLOAD_BYTES", 4096)
    code, store = run_agent(tmp_path, """
        for i in range(2000):
            print(f"line {i:05d}", flush=True)
        print("THE END", flush=True)
    """)
    assert code == 0
    text = store.read_attempt_log(1)
    assert len(text.encode()) <= 4096 and "THE END" in text and "line 00000" not in text
