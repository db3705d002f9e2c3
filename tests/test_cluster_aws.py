"""The provider's reliability guarantees on the AWS backend, against real Airflow 3.3 processes
(scheduler, dag-processor, triggerer, api-server; LocalExecutor on PostgreSQL) and an offline EC2/S3
(:class:`FakeAws`: moto plus a VM runner that runs each instance's user data as a local process).

Four scenarios: the triggerer SIGKILLed while the job is deferred (a new triggerer finishes it; one
EC2 attempt instance ever, no duplicate ledger attempt), mark-failed through the REST API (instance
terminated and EBS data volume deleted within 30 s), the task's state store cleared through the REST API
while an attempt runs and during its backup-save (the ledger is restored from its mirror), and the
``airflow-spot sweep --backend aws`` after all of Airflow was killed mid-job. Each prints how long recovery took.

The FakeAws lives in this process (its VM runner is a thread here) and is started before the cluster;
the Airflow processes get only its connection (``AIRFLOW_CONN_<ID>``) and the DAGs' settings through
:attr:`AirflowCluster.extra_env`. The sweep scenario kills the cluster, so it runs last.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from .aws_cloud import FakeAws
from .cluster import (
    AirflowCluster,
    Timings,
    logs_after_failure,
    print_timings,
    running,
    wait_for,
)

pytestmark = [pytest.mark.airflow, pytest.mark.timeout(600)]

CONN_ID = "spot_aws"
BUCKET = "spot-cluster"
REGION = "us-east-1"
RELEASE_DEADLINE = 30.0  # seconds: the promise after mark-failed ("Nothing leaks" in docs/design.md)
SWEEP_ARGS = ["sweep", "--backend", "aws", "--conn-id", CONN_ID, "--option", f"region_name={REGION}"]
TIMINGS = Timings()
INSTANCE_ID = re.compile(r"\bi-[0-9a-f]{8,17}\b")


@pytest.fixture(scope="module")
def aws(tmp_path_factory) -> Iterator[FakeAws]:
    with FakeAws(tmp_path_factory.mktemp("aws"), region=REGION) as fake:
        fake.client("s3").create_bucket(Bucket=BUCKET)
        yield fake
        assert not fake.runner_errors, fake.runner_errors
    assert not fake.processes_alive()


@pytest.fixture(scope="module")
def cluster(aws: FakeAws, tmp_path_factory, request) -> Iterator[AirflowCluster]:
    name, value = aws.airflow_conn(CONN_ID)
    ami = aws.client("ec2").describe_images()["Images"][0]["ImageId"]
    airflow = AirflowCluster(tmp_path_factory.mktemp("cluster"), extra_env={
        name: value, "SPOT_CLUSTER_AWS_AMI": ami, "SPOT_CLUSTER_AWS_BUCKET": BUCKET,
        "SPOT_CLUSTER_AWS_CONN_ID": CONN_ID,
    })
    with running(airflow, TIMINGS):
        yield airflow
    print_timings(request, "AWS recovery timings", TIMINGS)


@pytest.fixture(autouse=True)
def logs_on_failure(cluster: AirflowCluster, request, capsys) -> Iterator[None]:
    yield from logs_after_failure(cluster, request, capsys)


record, info = TIMINGS.record, TIMINGS.info


# -- the cloud, by the job's tags ------------------------------------------------------------------------
def job_filters(dag_id: str, run_id: str) -> list[dict[str, Any]]:
    return [{"Name": "tag:spot-dag-id", "Values": [dag_id]}, {"Name": "tag:spot-run-id", "Values": [run_id]}]


def tag(resource: dict[str, Any], key: str) -> str | None:
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}.get(key)


def instances(aws: FakeAws, dag_id: str, run_id: str, role: str | None = None) -> list[dict[str, Any]]:
    """Every instance ever launched for the job (EC2 keeps terminated ones on record), oldest first."""
    pages = aws.client("ec2").get_paginator("describe_instances").paginate(Filters=job_filters(dag_id, run_id))
    found = [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
    return sorted((i for i in found if role is None or tag(i, "spot-role") == role), key=lambda i: i["LaunchTime"])


def volumes(aws: FakeAws, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    return aws.client("ec2").describe_volumes(Filters=job_filters(dag_id, run_id))["Volumes"]


def leftovers(aws: FakeAws, dag_id: str, run_id: str) -> list[str]:
    """Whatever carries the job's tags and is not a terminated instance."""
    alive = [i["InstanceId"] for i in instances(aws, dag_id, run_id) if i["State"]["Name"] != "terminated"]
    return alive + [v["VolumeId"] for v in volumes(aws, dag_id, run_id)]


def vm_running(aws: FakeAws, instance_id: str) -> bool:
    """EC2 says running and the runner still runs the VM (its metadata server is up until the VM ends)."""
    return aws.instance_state(instance_id) == "running" and aws.imds_endpoint(instance_id) is not None


def cleanup_run(aws: FakeAws, dag_id: str, run_id: str) -> None:
    """Remove whatever a failed scenario left, so the next scenarios start clean."""
    ec2 = aws.client("ec2")
    alive = [i["InstanceId"] for i in instances(aws, dag_id, run_id) if i["State"]["Name"] != "terminated"]
    if alive:
        ec2.terminate_instances(InstanceIds=alive)
    for volume in volumes(aws, dag_id, run_id):
        with contextlib.suppress(ClientError):  # still attached somewhere: the fake's close ends it anyway
            ec2.delete_volume(VolumeId=volume["VolumeId"])


# -- Airflow -----------------------------------------------------------------------------------------------
def live_attempt(cluster: AirflowCluster, aws: FakeAws, dag_id: str, run_id: str,
                 timeout: float = 120) -> dict[str, Any]:
    """Wait until the task is deferred on a running EC2 attempt; return that instance."""
    cluster.wait_for_state(dag_id, run_id, ("deferred",), timeout)
    running = wait_for(lambda: [i for i in instances(aws, dag_id, run_id, "attempt")
                                if i["State"]["Name"] == "running" and vm_running(aws, i["InstanceId"])],
                       60, interval=0.25, what=f"a running EC2 attempt of {dag_id}")
    assert len(running) == 1, running
    return running[0]






# -- 1. triggerer restart ------------------------------------------------------------------------------------
def test_triggerer_killed_while_deferred_one_ec2_attempt_finishes(cluster, aws, capsys):
    dag_id = "spot_cluster_aws_triggerer_restart"
    run_id = cluster.trigger(dag_id)
    try:
        attempt = live_attempt(cluster, aws, dag_id, run_id)
        instance_id = attempt["InstanceId"]
        holder = cluster.running_holder(dag_id, run_id)
        old = cluster.triggerer(holder[1])
        assert old is not None, f"trigger held by unknown triggerer job {holder[1]}"

        killed = time.monotonic()
        cluster.kill(old, signal.SIGKILL)
        assert vm_running(aws, instance_id), "the EC2 attempt died with the triggerer"
        new = cluster.start_triggerer()

        cluster.wait_taken_over(dag_id, run_id, new)
        record(capsys, "1. triggerer SIGKILL -> trigger running in the new triggerer", time.monotonic() - killed)
        cluster.wait_for_state(dag_id, run_id, ("success", "failed", "up_for_retry"), 180)
        record(capsys, "1. triggerer SIGKILL -> task success", time.monotonic() - killed)

        assert cluster.ti_state(dag_id, run_id) == "success"
        assert cluster.try_number(dag_id, run_id) == 1
        launched = instances(aws, dag_id, run_id, "attempt")
        assert [i["InstanceId"] for i in launched] == [instance_id], launched
        job, attempts = cluster.ledger(dag_id, run_id)
        assert job.get("attempts") == 1 and len(attempts) == 1, attempts
        assert attempts[0]["instance_id"] == instance_id and attempts[0]["status"] == "succeeded", attempts[0]
        summary = cluster.xcom(dag_id, run_id)
        assert summary is not None and [a["instance_id"] for a in summary["attempts"]] == [instance_id], summary
        assert aws.wait_gone(instance_id) == "terminated"
        assert leftovers(aws, dag_id, run_id) == []
        info(capsys, f"one EC2 attempt {instance_id}; helpers launched: "
                     f"{len(instances(aws, dag_id, run_id, 'backup-save'))}")
    finally:
        cleanup_run(aws, dag_id, run_id)


# -- 2. mark failed while deferred -------------------------------------------------------------------------------
def test_mark_failed_while_deferred_terminates_instance_and_deletes_volume(cluster, aws, capsys):
    dag_id = "spot_cluster_aws_mark_failed"
    run_id = cluster.trigger(dag_id)
    try:
        attempt = live_attempt(cluster, aws, dag_id, run_id)
        instance_id = attempt["InstanceId"]
        holder = cluster.ready_holder(dag_id, run_id)
        assert volumes(aws, dag_id, run_id), "the attempt has no tagged EBS data volume"

        marked = time.monotonic()
        cluster.set_ti_state(dag_id, run_id, "failed")
        wait_for(lambda: not leftovers(aws, dag_id, run_id), RELEASE_DEADLINE, interval=0.25,
                 what="the instance to be terminated and its data volume deleted after mark-failed")
        record(capsys, "2. mark failed -> EC2 instance terminated and EBS volume deleted", time.monotonic() - marked)
        assert aws.wait_gone(instance_id) == "terminated"
        assert cluster.ti_state(dag_id, run_id) == "failed"
        assert [i["InstanceId"] for i in instances(aws, dag_id, run_id)] == [instance_id]
        # The trigger's on_kill did it (not the sweep or a worker): its log says so.
        wait_for(lambda: "on_kill: terminating" in cluster.trigger_log(dag_id, run_id, holder[1]), 60,
                 what="the trigger's on_kill to log the termination")
    finally:
        cleanup_run(aws, dag_id, run_id)


# -- 3. the ledger cleared in the UI while an attempt runs and during its backup-save ----------------------------
HELD_PYTHON = """#!/bin/bash
# The VM's Python; a backup-save waits for the test's word before it starts.
if [ "$2" = airflow_spot_provider.agent.backup ]; then
  touch {gate}.held
  while [ ! -e {gate} ]; do sleep 0.1; done
fi
exec {python} "$@"
"""


def test_ledger_cleared_while_running_and_during_backup_save_the_job_finishes_once(cluster, aws, capsys):
    """The UI's "Clear All Task State Store" (the REST call behind it) twice: while attempt 1 runs, and while its
    backup-save helper runs. The operator restores the ledger from its mirror in S3 each time: the job finishes
    once, with both attempts on record, one live attempt at a time, and nothing left in the cloud."""
    dag_id = "spot_cluster_aws_ledger_cleared"
    gate = cluster.root / "backup-save-gate"
    held = cluster.root / "held-python"
    held.write_text(HELD_PYTHON.format(gate=shlex.quote(str(gate)), python=shlex.quote(sys.executable)))
    held.chmod(0o755)
    run_id = cluster.trigger(dag_id)
    state_store = cluster._ti_path(dag_id, run_id, "train") + "/state-store"
    try:
        attempt = live_attempt(cluster, aws, dag_id, run_id)
        first = attempt["InstanceId"]
        wait_for(lambda: list((aws.vm_dir(first) / "root" / "data" / "checkpoints").glob("ckpt-*")), 120,
                 interval=0.25, what="attempt 1's first checkpoint")
        cluster.api("DELETE", state_store)
        assert cluster.state_store(dag_id, run_id) == {}
        info(capsys, f"state store cleared while {first} runs")

        cluster.wait_deferral_reported(dag_id, run_id)
        aws.preempt(first, notice_seconds=None)
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
        job, attempts = cluster.ledger(dag_id, run_id)
        assert job["attempts"] == 2 and [a["status"] for a in attempts] == ["preempted", "succeeded"], attempts
        assert attempts[0]["instance_id"] == first and attempts[0]["released"]
        assert attempts[0]["backup_save"] and not attempts[0]["backup_save"].get("error"), attempts[0]
        assert attempts[1]["restored_from"] == attempts[0]["last_checkpoint"] is not None
        assert attempts[1]["launched_at"] >= attempts[0]["ended_at"]  # one live attempt at a time
        summary = cluster.xcom(dag_id, run_id)
        assert [a["instance_id"] for a in summary["attempts"]] == [a["instance_id"] for a in attempts]
        assert len(instances(aws, dag_id, run_id, "attempt")) == 2
        wait_for(lambda: not leftovers(aws, dag_id, run_id), 60, interval=0.25, what="nothing left in the cloud")
    finally:
        gate.touch()
        cleanup_run(aws, dag_id, run_id)


# -- 4. Airflow crashes, the sweep cleans up (kills the cluster: runs last) -------------------------------------------
def test_sweep_after_airflow_crash_removes_instance_and_volume(cluster, aws, capsys):
    dag_id = "spot_cluster_aws_sweep"
    run_id = cluster.trigger(dag_id)
    try:
        attempt = live_attempt(cluster, aws, dag_id, run_id)
        orphan = attempt["InstanceId"]
        [volume] = [v["VolumeId"] for v in volumes(aws, dag_id, run_id)]
        crashed = time.monotonic()
        cluster.kill_all()
        time.sleep(1)
        assert vm_running(aws, orphan), "the EC2 attempt should outlive Airflow"
        # Right after a crash the metadata DB still looks live; the sweep calls the job orphaned only once
        # Airflow's heartbeats are older than its health threshold.
        cluster.wait_until_down()
        record(capsys, "4. Airflow SIGKILL -> heartbeats past the health threshold", time.monotonic() - crashed)

        dry = cluster.run_cli(SWEEP_ARGS)
        assert dry.returncode == 0, dry.stderr
        assert orphan in dry.stdout, f"dry run did not list the orphan:\n{dry.stdout}{dry.stderr}"
        assert vm_running(aws, orphan) and leftovers(aws, dag_id, run_id) == [orphan, volume], "dry run deleted"

        started = time.monotonic()
        delete = cluster.run_cli([*SWEEP_ARGS, "--delete"])
        assert delete.returncode == 0, delete.stderr
        assert orphan in delete.stdout, delete.stdout
        assert leftovers(aws, dag_id, run_id) == [], delete.stdout
        assert aws.wait_gone(orphan) == "terminated"
        record(capsys, "4. sweep --delete (instance terminated, volume deleted)", time.monotonic() - started)
        info(capsys, f"sweep --delete said:\n{delete.stdout.rstrip()}")

        again = cluster.run_cli([*SWEEP_ARGS, "--delete"])
        assert again.returncode == 0, again.stderr
        assert "nothing to sweep" in again.stdout and not INSTANCE_ID.search(again.stdout), again.stdout
    finally:
        cleanup_run(aws, dag_id, run_id)
