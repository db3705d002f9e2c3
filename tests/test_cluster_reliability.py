"""The provider's guarantees against real Airflow 3.3 processes (scheduler, dag-processor, triggerer,
api-server; LocalExecutor on PostgreSQL), which ``dag.test()`` cannot show: triggerer restart and HA
reassignment, a worker killed mid-launch, mark-failed of a deferred task, deferral timeout, and the
sweep after Airflow itself crashed.

Every scenario checks that the job finished exactly once (task state, ledger, XCom) and that no job
ever had two attempts alive (sampled in the background by :class:`AttemptMonitor`), and prints how
long recovery took. One cluster serves the whole module; the sweep scenario kills it, so it runs last.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from airflow_spot_provider.backends.base import CloudResource

from .cluster import (
    TRIGGERER_HEALTH_THRESHOLD,
    AirflowCluster,
    AttemptMonitor,
    Timings,
    attempt_processes,
    logs_after_failure,
    print_timings,
    running,
    wait_for,
)

pytestmark = [pytest.mark.airflow, pytest.mark.timeout(900)]

RELEASE_DEADLINE = 30.0  # seconds: the promise after mark-failed / timeout ("Nothing leaks" in docs/design.md)
TIMINGS = Timings()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[AirflowCluster]:
    airflow = AirflowCluster(tmp_path_factory.mktemp("cluster"))
    with running(airflow, TIMINGS):
        yield airflow


@pytest.fixture(scope="module")
def monitor(cluster: AirflowCluster, request) -> Iterator[AttemptMonitor]:
    with AttemptMonitor(cluster.state_dir) as sampler:
        yield sampler
    print_timings(request, "recovery timings", TIMINGS)


@pytest.fixture(autouse=True)
def logs_on_failure(cluster: AirflowCluster, request, capsys) -> Iterator[None]:
    yield from logs_after_failure(cluster, request, capsys)


record, info = TIMINGS.record, TIMINGS.info


# -- shared steps and checks ---------------------------------------------------------------------------
def live_attempt(cluster: AirflowCluster, monitor: AttemptMonitor, dag_id: str, run_id: str,
                 timeout: float = 120) -> CloudResource:
    """Wait until the task is deferred on a running attempt; return that attempt's instance."""
    cluster.wait_for_state(dag_id, run_id, ("deferred",), timeout)
    running = wait_for(lambda: [i for i in monitor.instances(dag_id, run_id) if i.state == "running"], 30,
                       interval=0.2, what=f"a running attempt of {dag_id}")
    assert len(running) == 1, running
    return running[0]




def instance(monitor: AttemptMonitor, instance_id: str) -> CloudResource:
    return next(i for i in monitor.backend.list_instances() if i.instance_id == instance_id)


def processes_of(cluster: AirflowCluster, instance_id: str) -> list[int]:
    return attempt_processes(cluster.state_dir).get(instance_id, [])


def gone_and_released(cluster: AirflowCluster, monitor: AttemptMonitor, instance_id: str) -> bool:
    item = instance(monitor, instance_id)
    return item.state == "terminated" and not item.has_disk and not processes_of(cluster, instance_id)




def assert_finished_once(cluster: AirflowCluster, monitor: AttemptMonitor, dag_id: str, run_id: str) -> None:
    """Task succeeded; one attempt in the ledger, in XCom and on the backend; never two alive at once."""
    assert cluster.ti_state(dag_id, run_id) == "success"
    job, attempts = cluster.ledger(dag_id, run_id)
    assert job.get("attempts") == 1 and len(attempts) == 1, attempts
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


def cleanup_run(monitor: AttemptMonitor, dag_id: str, run_id: str) -> None:
    """Remove whatever a failed scenario left running, so the next scenarios start clean."""
    for item in monitor.instances(dag_id, run_id):
        monitor.backend.terminate(item.instance_id)
        monitor.backend.release(item.instance_id)


# -- 1. triggerer restart ------------------------------------------------------------------------------
def test_triggerer_killed_while_deferred_new_triggerer_finishes_the_job(cluster, monitor, capsys):
    dag_id = "spot_cluster_triggerer_restart"
    run_id = cluster.trigger(dag_id)
    try:
        attempt = live_attempt(cluster, monitor, dag_id, run_id)
        holder = cluster.running_holder(dag_id, run_id)
        old = cluster.triggerer(holder[1])
        assert old is not None, f"trigger held by unknown triggerer job {holder[1]}"

        ages = cluster.heartbeat_ages()
        killed = time.monotonic()
        cluster.kill(old, signal.SIGKILL)
        assert processes_of(cluster, attempt.instance_id), "the attempt died with the triggerer"
        new = cluster.start_triggerer()

        cluster.wait_taken_over(dag_id, run_id, new)
        record(capsys, "1. triggerer SIGKILL -> trigger running in the new triggerer", time.monotonic() - killed)
        info(capsys, f"heartbeat ages at the kill: {ages} (killed job {old.job_id}, "
                     f"threshold {TRIGGERER_HEALTH_THRESHOLD}s)")
        cluster.wait_for_state(dag_id, run_id, ("success", "failed", "up_for_retry"), 180)
        record(capsys, "1. triggerer SIGKILL -> task success", time.monotonic() - killed)
        assert_finished_once(cluster, monitor, dag_id, run_id)
    finally:
        cleanup_run(monitor, dag_id, run_id)


# -- 2. two triggerers, the holder freezes ---------------------------------------------------------------
def test_frozen_triggerer_trigger_moves_and_job_finishes_once(cluster, monitor, capsys):
    dag_id = "spot_cluster_triggerer_ha"
    second = cluster.start_triggerer()
    frozen = None
    run_id = cluster.trigger(dag_id)
    try:
        attempt = live_attempt(cluster, monitor, dag_id, run_id)
        holder = cluster.ready_holder(dag_id, run_id)  # woken, it must answer its on_kill's question at once
        frozen = cluster.triggerer(holder[1])
        others = [c for c in cluster.components if c.name == "triggerer" and c.alive() and c is not frozen]
        assert frozen is not None and others, (holder, [c.job_id for c in cluster.components])
        pids = set(processes_of(cluster, attempt.instance_id))

        ages = cluster.heartbeat_ages()
        stopped = time.monotonic()
        cluster.kill(frozen, signal.SIGSTOP)
        moved = wait_for(lambda: (h := cluster.trigger_holder(dag_id, run_id)) and h[1] != frozen.job_id and h,
                         TRIGGERER_HEALTH_THRESHOLD + 60, interval=0.25, what="the trigger to move")
        assert cluster.triggerer(moved[1]) in others
        record(capsys, "2. holder SIGSTOP -> trigger reassigned", time.monotonic() - stopped)
        info(capsys, f"heartbeat ages at the freeze: {ages} (frozen job {frozen.job_id}, "
                     f"threshold {TRIGGERER_HEALTH_THRESHOLD}s)")

        # Wake the frozen triggerer while the job still runs: it finds its trigger gone and cancels it
        # (Airflow 3.3.2 calls on_kill then). The attempt must survive that.
        cluster.kill(frozen, signal.SIGCONT)
        woke = time.monotonic()
        wait_for(lambda: "trigger completed" in cluster.trigger_log(dag_id, run_id, frozen.job_id), 45,
                 what="the woken triggerer to drop its trigger")
        record(capsys, "2. SIGCONT -> woken triggerer dropped the trigger", time.monotonic() - woke)
        assert instance(monitor, attempt.instance_id).state == "running"
        assert pids <= set(processes_of(cluster, attempt.instance_id)), "the attempt was killed on reassignment"
        gate = cluster.root / "gates" / run_id.replace(":", "_")  # the job runs until the test opens its gate
        gate.parent.mkdir(exist_ok=True)
        gate.touch()
        cluster.wait_for_state(dag_id, run_id, ("success", "failed", "up_for_retry"), 180)
        record(capsys, "2. holder SIGSTOP -> task success", time.monotonic() - stopped)
        assert_finished_once(cluster, monitor, dag_id, run_id)
        assert cluster.try_number(dag_id, run_id) == 1
    finally:
        cluster.stop(frozen or second)
        cleanup_run(monitor, dag_id, run_id)


# -- 3. the worker dies right after launch ------------------------------------------------------------------
def test_worker_killed_right_after_launch_retry_reconnects(cluster, monitor, capsys):
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
        record(capsys, "3. worker SIGKILL -> try 2 deferred on the same attempt", time.monotonic() - killed)
        cluster.wait_for_state(dag_id, run_id, ("success", "failed"), 180)
        record(capsys, "3. worker SIGKILL -> task success", time.monotonic() - killed)
        assert_finished_once(cluster, monitor, dag_id, run_id)
        assert cluster.try_number(dag_id, run_id) == 2
        [only] = monitor.instances(dag_id, run_id)
        assert only.instance_id == instance_dir.name
    finally:
        cleanup_run(monitor, dag_id, run_id)


# -- 4. mark failed while deferred -------------------------------------------------------------------------
def test_mark_failed_while_deferred_terminates_and_releases(cluster, monitor, capsys):
    dag_id = "spot_cluster_mark_failed"
    run_id = cluster.trigger(dag_id)
    try:
        attempt = live_attempt(cluster, monitor, dag_id, run_id)
        cluster.ready_holder(dag_id, run_id)
        marked = time.monotonic()
        cluster.set_ti_state(dag_id, run_id, "failed")
        wait_for(lambda: gone_and_released(cluster, monitor, attempt.instance_id), RELEASE_DEADLINE,
                 interval=0.25, what="the attempt to be terminated and its disk released after mark-failed")
        record(capsys, "4. mark failed -> attempt terminated and disk released", time.monotonic() - marked)
        assert cluster.ti_state(dag_id, run_id) == "failed"
        assert len(monitor.instances(dag_id, run_id)) == 1
        assert monitor.max_live[(dag_id, run_id)] == 1
    finally:
        cleanup_run(monitor, dag_id, run_id)


# -- 5. deferral timeout (job_timeout) ------------------------------------------------------------------------
def test_job_timeout_fails_the_task_and_releases_the_attempt(cluster, monitor, capsys):
    dag_id = "spot_cluster_deferral_timeout"
    run_id = cluster.trigger(dag_id)
    try:
        started = time.monotonic()
        attempt = live_attempt(cluster, monitor, dag_id, run_id)
        cluster.wait_for_state(dag_id, run_id, ("failed", "up_for_retry", "success"), 120)
        failed = time.monotonic()
        assert cluster.ti_state(dag_id, run_id) == "failed"
        record(capsys, "5. trigger -> task failed by job_timeout=8s", failed - started)
        wait_for(lambda: gone_and_released(cluster, monitor, attempt.instance_id), RELEASE_DEADLINE,
                 interval=0.25, what="the attempt to be terminated and its disk released after the timeout")
        record(capsys, "5. task failed -> attempt terminated and disk released", time.monotonic() - failed)
        assert len(monitor.instances(dag_id, run_id)) == 1
        assert monitor.max_live[(dag_id, run_id)] == 1
    finally:
        cleanup_run(monitor, dag_id, run_id)


# -- 6. Airflow crashes, the sweep cleans up (kills the cluster: runs last) -------------------------------------
def test_sweep_after_airflow_crash_removes_the_orphan(cluster, monitor, capsys):
    dag_id = "spot_cluster_sweep"
    run_id = cluster.trigger(dag_id)
    try:
        attempt = live_attempt(cluster, monitor, dag_id, run_id)
        orphan = attempt.instance_id
        crashed = time.monotonic()
        cluster.kill_all()
        time.sleep(1)
        assert instance(monitor, orphan).state == "running" and processes_of(cluster, orphan), \
            "the attempt should outlive Airflow"
        # Right after a crash the metadata DB still looks live (fresh heartbeats, task deferred); the
        # sweep can only call the job orphaned once Airflow's heartbeats are older than its health threshold.
        cluster.wait_until_down()
        record(capsys, "6. Airflow SIGKILL -> heartbeats past the health threshold", time.monotonic() - crashed)

        dry = cluster.run_cli(["sweep"])
        assert dry.returncode == 0, dry.stderr
        assert orphan in dry.stdout, f"dry run did not list the orphan:\n{dry.stdout}{dry.stderr}"
        item = instance(monitor, orphan)
        assert item.state == "running" and item.has_disk and processes_of(cluster, orphan), "dry run deleted"

        started = time.monotonic()
        delete = cluster.run_cli(["sweep", "--delete"])
        assert delete.returncode == 0, delete.stderr
        assert orphan in delete.stdout, delete.stdout
        assert gone_and_released(cluster, monitor, orphan), instance(monitor, orphan)
        record(capsys, "6. sweep --delete (orphan terminated and released)", time.monotonic() - started)
        leftovers = [i for i in monitor.backend.list_instances() if i.state in ("pending", "running") or i.has_disk]
        assert not leftovers, leftovers

        again = cluster.run_cli(["sweep", "--delete"])
        assert again.returncode == 0, again.stderr
        assert "i-local-" not in again.stdout, again.stdout
    finally:
        cleanup_run(monitor, dag_id, run_id)
