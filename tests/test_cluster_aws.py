"""A reliability scenario of the AWS backend alone, against real Airflow 3.3 processes (scheduler,
dag-processor, triggerer, api-server; LocalExecutor on PostgreSQL) and an offline EC2/S3 (:class:`FakeAws`: moto
plus a VM runner that runs each instance's user data as local processes): the task's state store cleared through
the REST API while an attempt runs and during its backup-save (the ledger is restored from its mirror in S3).

The scenarios every cloud shares (triggerer restart, mark-failed, sweep after a crash) are in
tests/test_cluster_scenarios.py; the cluster is built the same way (tests/clouds.py).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator

import pytest

from .clouds import Cloud, airflow_on, job, live_attempt
from .cluster import AirflowCluster, Timings, logs_after_failure, print_timings, wait_for

pytestmark = [pytest.mark.airflow, pytest.mark.timeout(600)]

TIMINGS = Timings()
info = TIMINGS.info


@pytest.fixture(scope="module")
def cloud_cluster(request, tmp_path_factory) -> Iterator[tuple[Cloud, AirflowCluster]]:
    with airflow_on("aws", tmp_path_factory.mktemp("cluster"), TIMINGS) as pair:
        yield pair
    print_timings(request, "AWS timings", TIMINGS)


@pytest.fixture(autouse=True)
def logs_on_failure(cloud_cluster, request, capsys) -> Iterator[None]:
    yield from logs_after_failure(cloud_cluster[1], request, capsys)


# -- the ledger cleared in the UI while an attempt runs and during its backup-save ----------------------------
HELD_PYTHON = """#!/bin/bash
# The VM's Python; a backup-save waits for the test's word before it starts.
if [ "$2" = airflow_spot_provider.agent.backup ]; then
  touch {gate}.held
  while [ ! -e {gate} ]; do sleep 0.1; done
fi
exec {python} "$@"
"""


def test_ledger_cleared_while_running_and_during_backup_save_the_job_finishes_once(cloud_cluster, capsys):
    """The UI's "Clear All Task State Store" (the REST call behind it) twice: while attempt 1 runs, and while its
    backup-save helper runs. The operator restores the ledger from its mirror in S3 each time: the job finishes
    once, with both attempts on record, one live attempt at a time, and nothing left in the cloud."""
    aws, cluster = cloud_cluster
    dag_id = "spot_cluster_aws_ledger_cleared"
    gate = cluster.root / "backup-save-gate"
    held = cluster.root / "held-python"
    held.write_text(HELD_PYTHON.format(gate=shlex.quote(str(gate)), python=shlex.quote(sys.executable)))
    held.chmod(0o755)
    run_id = cluster.trigger(dag_id)
    tags = job(dag_id, run_id)
    state_store = cluster._ti_path(dag_id, run_id, "train") + "/state-store"
    try:
        first = live_attempt(cluster, aws, dag_id, run_id)
        wait_for(lambda: list((aws.fake.data_dir(first) / "checkpoints").glob("ckpt-*")), 120,
                 interval=0.25, what="attempt 1's first checkpoint")
        cluster.api("DELETE", state_store)
        assert cluster.state_store(dag_id, run_id) == {}
        info(capsys, f"state store cleared while {first} runs")

        cluster.wait_deferral_reported(dag_id, run_id)
        aws.fake.preempt(first, notice_seconds=None)
        wait_for(lambda: gate.with_name(gate.name + ".held").exists(), 120, interval=0.25,
                 what="the backup-save helper to start (and be held)")
        cluster.wait_for_state(dag_id, run_id, ("deferred",), 120)
        _, attempts = cluster.ledger(dag_id, run_id)
        assert attempts and attempts[0]["backup_helper"], attempts  # restored, and the helper recorded
        cluster.api("DELETE", state_store)
        assert cluster.state_store(dag_id, run_id) == {}
        info(capsys, "state store cleared while the backup-save helper runs")
        gate.touch()

        cluster.wait_for_state(dag_id, run_id, ("success", "failed", "up_for_retry"), 300)
        assert cluster.ti_state(dag_id, run_id) == "success"
        assert cluster.try_number(dag_id, run_id) == 1
        ledger_job, attempts = cluster.ledger(dag_id, run_id)
        assert ledger_job["attempts"] == 2 and [a["status"] for a in attempts] == ["preempted", "succeeded"], attempts
        assert attempts[0]["instance_id"] == first and attempts[0]["released"]
        assert attempts[0]["backup_save"] and not attempts[0]["backup_save"].get("error"), attempts[0]
        assert attempts[1]["restored_from"] == attempts[0]["last_checkpoint"] is not None
        assert attempts[1]["launched_at"] >= attempts[0]["ended_at"]  # one live attempt at a time
        summary = cluster.xcom(dag_id, run_id)
        assert [a["instance_id"] for a in summary["attempts"]] == [a["instance_id"] for a in attempts]
        assert len(aws.instances({**tags, "spot-role": "attempt"})) == 2
        wait_for(lambda: not aws.leftovers(tags), 60, interval=0.25, what="nothing left in the cloud")
    finally:
        gate.touch()
        aws.cleanup(tags)
