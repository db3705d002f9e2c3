"""No connection secret leaves Airflow ("No credentials leave Airflow" in docs/design.md): not in the job's
environment, the files the local backend writes, the task log,
the XCom summary or the ledger — unless the DAG author passes it on purpose."""

from __future__ import annotations

import json
import sys

import pytest

from .e2e import run_job

MARKER = "s3cr3t-marker-5d1e0b7a"
DUMP_ENV = ("import json, os, pathlib; "
            "pathlib.Path(os.environ['SPOT_CHECKPOINT_DIR'], 'env.json').write_text(json.dumps(dict(os.environ)))")


@pytest.mark.usefixtures("airflow_db")
def test_local_job_sees_no_connection_secret_anywhere(tmp_path, state_dir, capfd, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "postgres", "password": MARKER}))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", MARKER)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", f"/keys/{MARKER}.json")
    monkeypatch.setenv("WANTED_BY_JOB", "visible")
    result = run_job("e2e_secrets_local", tmp_path, [sys.executable, "-c", DUMP_ENV], pass_env=["WANTED_BY_JOB"],
                     backend_options={"state_dir": str(state_dir)})
    assert result["state"] == "success"
    job_env = json.loads((tmp_path / "store" / "env.json").read_text())
    assert job_env["WANTED_BY_JOB"] == "visible"  # what the author lists does pass
    assert not [k for k in job_env if k.startswith(("AIRFLOW_CONN_", "AWS_", "GOOGLE_"))]
    everything = [json.dumps(result["summary"]), capfd.readouterr().out, json.dumps(job_env)]
    for path in state_dir.rglob("*"):  # instance.json, agent.json, state.json, console.log, the disk
        if path.is_file():
            everything.append(path.read_text(errors="replace"))
    assert not [text[:80] for text in everything if MARKER in text]


def test_local_agent_process_environment_has_no_secret(tmp_path, local_backend, monkeypatch):
    import psutil

    from .test_local_backend import SLEEPER, request, wait_for

    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", MARKER)
    monkeypatch.setenv("AWS_SESSION_TOKEN", MARKER)
    facts = local_backend.launch(request(tmp_path, SLEEPER))
    state = json.loads((local_backend.instances / facts.instance_id / "state.json").read_text())
    agent = wait_for(lambda: psutil.Process(state["agent_pgid"]).children(recursive=True) and
                     psutil.Process(state["agent_pgid"]))
    for proc in [agent, *agent.children(recursive=True)]:
        environ = proc.environ()
        assert MARKER not in json.dumps(environ), proc.cmdline()
        assert not [k for k in environ if k.startswith(("AIRFLOW_CONN_", "AWS_", "GOOGLE_"))]
