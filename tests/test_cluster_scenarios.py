"""The provider's guarantees against real Airflow 3.3 processes (scheduler, dag-processor, triggerer, api-server;
LocalExecutor on PostgreSQL), which ``dag.test()`` cannot show, on every cloud: the local backend, AWS and GCP
(their fakes run in this process, tests/clouds.py; the Airflow processes get the connection and the DAGs'
settings, tests/cluster_dags).

Three scenarios per cloud: the triggerer SIGKILLed while the job is deferred (a new triggerer finishes it; one
attempt VM ever, one ledger attempt), mark-failed through the REST API (VM and data disk removed within 30 s, by
the trigger's on_kill), and ``airflow-spot sweep`` after all of Airflow was killed mid-job. Each prints how long
recovery took. One cluster per cloud serves its scenarios; the sweep scenario kills it, so it runs last.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from .clouds import NAMES, Cloud, airflow_on, job, live_attempt
from .cluster import AirflowCluster, Timings, logs_after_failure, print_timings, wait_for

pytestmark = [pytest.mark.airflow, pytest.mark.timeout(900)]

TERMINAL = ("success", "failed", "up_for_retry")
RELEASE_DEADLINE = 30.0  # seconds: the promise after mark-failed ("Nothing leaks" in docs/design.md)
TIMINGS = Timings()
record, info = TIMINGS.record, TIMINGS.info


@pytest.fixture(scope="module", params=NAMES)
def cloud_cluster(request, tmp_path_factory) -> Iterator[tuple[Cloud, AirflowCluster]]:
    TIMINGS.clear()
    with airflow_on(request.param, tmp_path_factory.mktemp(f"cluster-{request.param}"), TIMINGS) as pair:
        yield pair
    print_timings(request, f"{request.param} recovery timings", TIMINGS)


@pytest.fixture(scope="module")
def cloud(cloud_cluster) -> Cloud:
    return cloud_cluster[0]


@pytest.fixture(scope="module")
def cluster(cloud_cluster) -> AirflowCluster:
    return cloud_cluster[1]


@pytest.fixture(autouse=True)
def logs_on_failure(cluster: AirflowCluster, request, capsys) -> Iterator[None]:
    yield from logs_after_failure(cluster, request, capsys)


# -- 1. triggerer restart ------------------------------------------------------------------------------------
def test_triggerer_killed_while_deferred_new_triggerer_finishes_the_one_attempt(cluster, cloud, capsys):
    dag_id = cloud.dag_prefix + "triggerer_restart"
    before = cloud.created()
    run_id = cluster.trigger(dag_id)
    try:
        instance_id = live_attempt(cluster, cloud, dag_id, run_id)
        holder = cluster.running_holder(dag_id, run_id)
        old = cluster.triggerer(holder[1])
        assert old is not None, f"trigger held by unknown triggerer job {holder[1]}"

        ages = cluster.heartbeat_ages()
        killed = time.monotonic()
        cluster.kill(old, signal.SIGKILL)
        assert cloud.vm_running(instance_id), "the attempt died with the triggerer"
        new = cluster.start_triggerer()

        cluster.wait_taken_over(dag_id, run_id, new)
        record(capsys, f"{cloud.name} 1. triggerer SIGKILL -> trigger running in the new triggerer",
               time.monotonic() - killed)
        info(capsys, f"heartbeat ages at the kill: {ages} (killed job {old.job_id})")
        cluster.wait_for_state(dag_id, run_id, TERMINAL, 180)
        record(capsys, f"{cloud.name} 1. triggerer SIGKILL -> task success", time.monotonic() - killed)

        assert cluster.ti_state(dag_id, run_id) == "success"
        assert cluster.try_number(dag_id, run_id) == 1
        assert cloud.created() - before == {instance_id}  # one attempt VM ever, no helper: never two alive
        ledger_job, attempts = cluster.ledger(dag_id, run_id)
        assert ledger_job.get("attempts") == 1 and len(attempts) == 1, attempts
        assert attempts[0]["instance_id"] == instance_id and attempts[0]["status"] == "succeeded", attempts[0]
        summary = cluster.xcom(dag_id, run_id)
        assert summary is not None, "no XCom summary"
        assert summary["totals"]["attempts"] == 1
        assert [a["instance_id"] for a in summary["attempts"]] == [instance_id], summary
        wait_for(lambda: not cloud.leftovers(job(dag_id, run_id)), RELEASE_DEADLINE, interval=0.25,
                 what="the finished job's VM and disks to be removed")
    finally:
        cloud.cleanup(job(dag_id, run_id))


# -- 2. mark failed while deferred -------------------------------------------------------------------------------
def test_mark_failed_while_deferred_removes_the_vm_and_its_data_disk(cluster, cloud, capsys):
    dag_id = cloud.dag_prefix + "mark_failed"
    before = cloud.created()
    run_id = cluster.trigger(dag_id)
    tags = job(dag_id, run_id)
    try:
        instance_id = live_attempt(cluster, cloud, dag_id, run_id)
        holder = cluster.ready_holder(dag_id, run_id)  # woken, it must answer its on_kill's question at once
        assert cloud.disks(tags) == [cloud.data_disk(instance_id)], "the attempt has no tagged data disk"

        marked = time.monotonic()
        cluster.set_ti_state(dag_id, run_id, "failed")
        wait_for(lambda: not cloud.leftovers(tags), RELEASE_DEADLINE, interval=0.25,
                 what="the VM and its data disk to be removed after mark-failed")
        record(capsys, f"{cloud.name} 2. mark failed -> VM and data disk removed", time.monotonic() - marked)
        cloud.fake.wait_gone(instance_id)
        assert cluster.ti_state(dag_id, run_id) == "failed"
        assert cloud.created() - before == {instance_id}
        # The trigger's on_kill did it (not the sweep or a worker): its log says so.
        wait_for(lambda: "on_kill: terminating" in cluster.trigger_log(dag_id, run_id, holder[1]), 60,
                 what="the trigger's on_kill to log the termination")
    finally:
        cloud.cleanup(tags)


# -- 3. Airflow crashes, the sweep cleans up (kills the cluster: runs last) -------------------------------------
def test_sweep_after_airflow_crash_removes_the_orphan(cluster, cloud, capsys):
    dag_id = cloud.dag_prefix + "sweep"
    run_id = cluster.trigger(dag_id)
    tags = job(dag_id, run_id)
    try:
        orphan = live_attempt(cluster, cloud, dag_id, run_id)
        disk = cloud.data_disk(orphan)
        crashed = time.monotonic()
        cluster.kill_all()  # returns once every Airflow process is dead
        assert cloud.vm_running(orphan), "the attempt should outlive Airflow"
        # Right after a crash the metadata DB still looks live (fresh heartbeats, task deferred); the sweep can
        # only call the job orphaned once Airflow's heartbeats are older than its health threshold.
        cluster.wait_until_down()
        record(capsys, f"{cloud.name} 3. Airflow SIGKILL -> heartbeats past the health threshold",
               time.monotonic() - crashed)

        dry = cluster.run_cli(cloud.sweep_args())
        assert dry.returncode == 0, dry.stderr
        assert orphan in dry.stdout, f"dry run did not list the orphan:\n{dry.stdout}{dry.stderr}"
        assert cloud.vm_running(orphan) and cloud.vms(tags) == [orphan] and cloud.disks(tags) == [disk], \
            "the dry run deleted something"

        started = time.monotonic()
        delete = cluster.run_cli([*cloud.sweep_args(), "--delete"])
        assert delete.returncode == 0, delete.stderr
        assert orphan in delete.stdout, delete.stdout
        assert cloud.leftovers({}) == [], delete.stdout  # nothing of any job is left
        cloud.fake.wait_gone(orphan)
        record(capsys, f"{cloud.name} 3. sweep --delete (VM and data disk removed)", time.monotonic() - started)
        info(capsys, f"sweep --delete said:\n{delete.stdout.rstrip()}")

        again = cluster.run_cli([*cloud.sweep_args(), "--delete"])
        assert again.returncode == 0, again.stderr
        assert "nothing to sweep" in again.stdout and not cloud.any_instance_id.search(again.stdout), again.stdout
    finally:
        cloud.cleanup(tags)
