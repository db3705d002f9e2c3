"""``airflow-spot sweep --assume-down``: sweep right after an Airflow crash, refuse while Airflow heartbeats.

The metadata database holds what a crashed Airflow leaves: a scheduler job still ``running`` whose heartbeat
no longer moves, and a DAG run still ``running``. The sweep runs through the CLI against the local backend.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from airflow_spot_provider.attempt import InstanceState
from airflow_spot_provider.cli import main as cli

from .test_local_backend import SLEEPER, request

pytestmark = pytest.mark.usefixtures("airflow_db")

#: The scheduler's heartbeat interval here: --assume-down refuses for two of them (two minutes), far more than
#: a busy machine takes between two lines of the test.
HEARTBEAT_SEC = 60
#: The plain sweep's "Airflow is down" threshold here: an hour.
THRESHOLD = 3600


@pytest.fixture
def crashed_airflow(monkeypatch):
    """A running DAG run "dag"/"run" and a scheduler job; returns a function that sets its last heartbeat."""
    from airflow.jobs.job import Job
    from airflow.models.dagrun import DagRun
    from airflow.sdk import timezone
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    monkeypatch.setenv("AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC", str(HEARTBEAT_SEC))
    monkeypatch.setenv("AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD", str(THRESHOLD))
    with create_session() as session:
        job = Job(job_type="SchedulerJob", state="running")
        session.add(job)
        session.add(DagRun(dag_id="dag", run_id="run", run_type="manual", state="running"))
        session.flush()
        job_id = job.id

    def heartbeat(seconds_ago: float) -> None:
        with create_session() as session:
            session.get(Job, job_id).latest_heartbeat = timezone.utcnow() - timedelta(seconds=seconds_ago)

    yield heartbeat
    with create_session() as session:  # other tests expect a metadata DB without heartbeats or this run
        session.execute(delete(Job).where(Job.id == job_id))
        session.execute(delete(DagRun).where(DagRun.dag_id == "dag", DagRun.run_id == "run"))


def test_assume_down_sweeps_right_after_a_crash_and_refuses_while_airflow_heartbeats(
        tmp_path, local_backend, crashed_airflow, capsys):
    running = local_backend.launch(request(tmp_path, SLEEPER))  # a task of DAG run dag/run
    state = ["--state-dir", str(local_backend.state_dir)]

    crashed_airflow(seconds_ago=0)  # the scheduler heartbeats: Airflow is up
    assert cli([*state, "sweep", "--delete"]) == 0
    assert "nothing to sweep" in capsys.readouterr().out
    assert cli([*state, "sweep", "--assume-down", "--delete"]) == 2
    out, err = capsys.readouterr()
    assert "refusing --assume-down: SchedulerJob" in err and "nothing was deleted" in err and not out
    assert local_backend._facts(running.instance_id).state is InstanceState.RUNNING

    # It crashed ten minutes ago: long past two heartbeats, yet well within the health threshold.
    crashed_airflow(seconds_ago=600)
    assert cli([*state, "sweep", "--delete"]) == 0
    assert "nothing to sweep" in capsys.readouterr().out  # the plain sweep still counts the job as live
    assert cli([*state, "sweep", "--assume-down"]) == 0  # still a dry run without --delete
    out, err = capsys.readouterr()
    assert err.startswith("WARNING: --assume-down")
    assert f"would delete running attempt {running.instance_id}" in out and "Airflow is assumed down" in out
    assert local_backend._facts(running.instance_id).state is InstanceState.RUNNING
    assert cli([*state, "sweep", "--assume-down", "--delete"]) == 0
    assert f"deleting running attempt {running.instance_id}" in capsys.readouterr().out
    assert local_backend._facts(running.instance_id).state is InstanceState.TERMINATED


def test_assume_down_rejects_options_it_would_ignore(local_backend, capsys):
    state = ["--state-dir", str(local_backend.state_dir)]
    with pytest.raises(SystemExit) as exit_info:
        cli([*state, "sweep", "--assume-down", "--no-airflow"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert cli([*state, "sweep", "--assume-down", "--heartbeat-seconds", "5"]) == 2
    assert "--heartbeat-seconds has no effect with --assume-down" in capsys.readouterr().err
