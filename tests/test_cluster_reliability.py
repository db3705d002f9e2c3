"""The provider's guarantees on the local backend against real Airflow 3.3 processes (scheduler,
dag-processor, triggerer, api-server; LocalExecutor on PostgreSQL), which ``dag.test()`` cannot show: HA
reassignment away from a frozen triggerer, a worker killed mid-launch, and the deferral timeout. The scenarios
every cloud shares (triggerer restart, mark-failed, sweep after a crash) are in tests/test_cluster_scenarios.py;
the cluster is built the same way (tests/clouds.py).

Every scenario checks that the job finished exactly once (task state, ledger, XCom) and that no job
ever had two attempts alive (sampled in the background by :class:`AttemptMonitor`), and prints how
long recovery took. One cluster serves the whole module.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from .clouds import Cloud, airflow_on, job, live_attempt
from .cluster import (
    TRIGGERER_HEALTH_THRESHOLD,
    AirflowCluster,
    AttemptMonitor,
    Timings,
    logs_after_failure,
    print_timings,
    wait_for,
)

pytestmark = [pytest.mark.airflow, pytest.mark.timeout(900)]

RELEASE_DEADLINE = 30.0  # seconds: the promise after a timeout ("Nothing leaks" in docs/design.md)
TIMINGS = Timings()


@pytest.fixture(scope="module")
def cloud_cluster(tmp_path_factory) -> Iterator[tuple[Cloud, AirflowCluster]]:
    with airflow_on("local", tmp_path_factory.mktemp("cluster"), TIMINGS) as pair:
        yield pair


@pytest.fixture(scope="module")
def cloud(cloud_cluster) -> Cloud:
    return cloud_cluster[0]


@pytest.fixture(scope="module")
def cluster(cloud_cluster) -> AirflowCluster:
    return cloud_cluster[1]


@pytest.fixture(scope="module")
def monitor(cluster: AirflowCluster, request) -> Iterator[AttemptMonitor]:
    with AttemptMonitor(cluster.state_dir) as sampler:
        yield sampler
    print_timings(request, "recovery timings", TIMINGS)


@pytest.fixture(autouse=True)
def logs_on_failure(cluster: AirflowCluster, request, capsys) -> Iterator[None]:
    yield from logs_after_failure(cluster, request, capsys)


record, info = TIMINGS.record, TIMINGS.info


def assert_finished_once(cluster: AirflowCluster, monitor: AttemptMonitor, dag_id: str, run_id: str) -> None:
    """Task succeeded; one attempt in the ledger, in XCom and on the backend; never two alive at once."""
    assert cluster.ti_state(dag_id, run_id) == "success"
    ledger_job, attempts = cluster.ledger(dag_id, run_id)
    assert ledger_job.get("attempts") == 1 and len(attempts) == 1, attempts
    assert attempts[0]["status"] == "succeeded", attempts[0]
    instances = monitor.instances(dag_id, run_id)
    assert [i.instance_id for i in instances] == [attempts[0]["instance_id"]], instances
    assert instances[0].state == "terminated" and not instances[0].has_disk, instances[0]
    summary = cluster.xcom(dag_id, run_id)
    assert summary is not None, "no XCom summary"
    assert summary["totals"]["attempts"] == 1
    assert [a["instance_id"] for a in summary["attempts"]] == [attempts[0]["instance_id"]]
    monitor.sample()
    assert monitor.max_live[(dag_id, run_id)] == 1
    assert monitor.max_with_processes[(dag_id, run_id)] == 1


# -- 1. two triggerers, the holder freezes ---------------------------------------------------------------
def test_frozen_triggerer_trigger_moves_and_job_finishes_once(cluster, cloud, monitor, capsys):
    dag_id = "spot_cluster_triggerer_ha"
    second = cluster.start_triggerer()
    frozen = None
    run_id = cluster.trigger(dag_id)
    try:
        attempt = live_attempt(cluster, cloud, dag_id, run_id)
        holder = cluster.ready_holder(dag_id, run_id)  # woken, it must answer its on_kill's question at once
        frozen = cluster.triggerer(holder[1])
        others = [c for c in cluster.components if c.name == "triggerer" and c.alive() and c is not frozen]
        assert frozen is not None and others, (holder, [c.job_id for c in cluster.components])
        pids = cloud.fake.tracked(attempt)

        ages = cluster.heartbeat_ages()
        stopped = time.monotonic()
        cluster.kill(frozen, signal.SIGSTOP)
        moved = wait_for(lambda: (h := cluster.trigger_holder(dag_id, run_id)) and h[1] != frozen.job_id and h,
                         TRIGGERER_HEALTH_THRESHOLD + 60, interval=0.25, what="the trigger to move")
        assert cluster.triggerer(moved[1]) in others
        record(capsys, "1. holder SIGSTOP -> trigger reassigned", time.monotonic() - stopped)
        info(capsys, f"heartbeat ages at the freeze: {ages} (frozen job {frozen.job_id}, "
                     f"threshold {TRIGGERER_HEALTH_THRESHOLD}s)")

        # Wake the frozen triggerer while the job still runs: it finds its trigger gone and cancels it
        # (Airflow 3.3.2 calls on_kill then). The attempt must survive that.
        cluster.kill(frozen, signal.SIGCONT)
        woke = time.monotonic()
        wait_for(lambda: "trigger completed" in cluster.trigger_log(dag_id, run_id, frozen.job_id), 45,
                 what="the woken triggerer to drop its trigger")
        record(capsys, "1. SIGCONT -> woken triggerer dropped the trigger", time.monotonic() - woke)
        assert cloud.status(attempt) == "running"
        assert pids <= cloud.fake.tracked(attempt), "the attempt was killed on reassignment"
        gate = cluster.root / "gates" / run_id.replace(":", "_")  # the job runs until the test opens its gate
        gate.parent.mkdir(exist_ok=True)
        gate.touch()
        cluster.wait_for_state(dag_id, run_id, ("success", "failed", "up_for_retry"), 180)
        record(capsys, "1. holder SIGSTOP -> task success", time.monotonic() - stopped)
        assert_finished_once(cluster, monitor, dag_id, run_id)
        assert cluster.try_number(dag_id, run_id) == 1
    finally:
        cluster.stop(frozen or second)
        cloud.cleanup(job(dag_id, run_id))


# -- 2. the worker dies right after launch ------------------------------------------------------------------
def test_worker_killed_right_after_launch_retry_reconnects(cluster, cloud, monitor, capsys):
    dag_id = "spot_cluster_worker_crash"
    instances = cluster.state_dir / "instances"
    before = set(instances.iterdir()) if instances.is_dir() else set()
    run_id = cluster.trigger(dag_id)
    try:
        ti = wait_for(lambda: (t := cluster.task_instance(dag_id, run_id)) and t.get("state") == "running" and t,
                      120, interval=0.2, what="try 1 to run")
        runner = wait_for(lambda: cluster.task_runner(ti["id"]), 60, interval=0.05, what="the task-runner process")

        def launched() -> Path | None:
            # The local cloud accepted the launch (the instance directory appears only then); the VM now boots
            # for boot_seconds while the launch call waits for it.
            new = [p for p in instances.glob("i-local-*") if p not in before] if instances.is_dir() else []
            return next(iter(new), None)

        instance_dir = wait_for(launched, 60, interval=0.05, what="the attempt to be launched")
        try:
            runner.kill()  # SIGKILL, between the launch and the instance id reaching the ledger / the deferral
        except psutil.NoSuchProcess:
            pytest.fail("the task-runner had already exited (deferred) before it could be killed")
        killed = time.monotonic()
        _, attempts = cluster.ledger(dag_id, run_id)
        assert [(a["status"], a["instance_id"]) for a in attempts] == [("launching", None)], attempts
        info(capsys, f"worker killed with attempt 1 recorded as launching; TI was {cluster.ti_state(dag_id, run_id)!r}")

        # Try 2 defers on the same attempt (or, on a slow machine, finds it done already: then it was quick).
        wait_for(lambda: cluster.try_number(dag_id, run_id) == 2
                 and cluster.ti_state(dag_id, run_id) in ("deferred", "success"),
                 180, interval=0.25, what="try 2 to defer")
        record(capsys, "2. worker SIGKILL -> try 2 deferred on the same attempt", time.monotonic() - killed)
        cluster.wait_for_state(dag_id, run_id, ("success", "failed"), 180)
        record(capsys, "2. worker SIGKILL -> task success", time.monotonic() - killed)
        assert_finished_once(cluster, monitor, dag_id, run_id)
        assert cluster.try_number(dag_id, run_id) == 2
        [only] = monitor.instances(dag_id, run_id)
        assert only.instance_id == instance_dir.name
    finally:
        cloud.cleanup(job(dag_id, run_id))


# -- 3. deferral timeout (job_timeout) ------------------------------------------------------------------------
def test_job_timeout_fails_the_task_and_releases_the_attempt(cluster, cloud, monitor, capsys):
    dag_id = "spot_cluster_deferral_timeout"
    run_id = cluster.trigger(dag_id)
    try:
        started = time.monotonic()
        attempt = live_attempt(cluster, cloud, dag_id, run_id)
        cluster.wait_for_state(dag_id, run_id, ("failed", "up_for_retry", "success"), 120)
        failed = time.monotonic()
        assert cluster.ti_state(dag_id, run_id) == "failed"
        record(capsys, "3. trigger -> task failed by job_timeout=8s", failed - started)
        wait_for(lambda: not cloud.leftovers(job(dag_id, run_id)), RELEASE_DEADLINE,
                 interval=0.25, what="the attempt to be terminated and its disk released after the timeout")
        record(capsys, "3. task failed -> attempt terminated and disk released", time.monotonic() - failed)
        assert [i.instance_id for i in monitor.instances(dag_id, run_id)] == [attempt]
        assert monitor.max_live[(dag_id, run_id)] == 1
    finally:
        cloud.cleanup(job(dag_id, run_id))
