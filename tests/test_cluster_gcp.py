"""The provider's reliability guarantees on the GCP backend, against real Airflow 3.3 processes
(scheduler, dag-processor, triggerer, api-server; LocalExecutor on PostgreSQL) and an offline Google Cloud
(:class:`FakeGcp`: a Compute Engine REST API whose VM runner runs each startup script as a local process,
and :class:`FakeGcs`: the gcp-storage-emulator).

Three scenarios: the triggerer SIGKILLed while the job is deferred (a new triggerer finishes it; one
attempt VM ever inserted, no duplicate ledger attempt), mark-failed through the REST API (VM and data disk
deleted within 30 s), and the ``airflow-spot sweep --backend gcp`` after all of Airflow was killed mid-job.
Each prints how long recovery took.

The fakes live in this process (the VM runner is a thread here, the GCS emulator a child process) and are
started before the cluster; the Airflow processes get only the connection (``AIRFLOW_CONN_<ID>``), the
emulator's ``STORAGE_EMULATOR_HOST`` (plus gcsfs's plain-bucket flag) and the DAGs' settings through
:attr:`AirflowCluster.extra_env`. GCE forgets deleted VMs, so "one attempt ever" is read from the cloud's
own record of ``insert`` operations. The sweep scenario kills the cluster, so it runs last.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from airflow_spot_provider.backends.gcp import label_value

from .cluster import (
    AirflowCluster,
    Timings,
    logs_after_failure,
    print_timings,
    running,
    wait_for,
)
from .gcp_cloud import FakeGcp, FakeGcs

pytestmark = [pytest.mark.airflow, pytest.mark.timeout(600)]

CONN_ID = "spot_gcp"
PROJECT = "spot-project"
BUCKET = "spot-cluster"
RELEASE_DEADLINE = 30.0  # seconds: the promise after mark-failed ("Nothing leaks" in docs/design.md)
TIMINGS = Timings()


@pytest.fixture(scope="module")
def gcs(tmp_path_factory) -> Iterator[FakeGcs]:
    with FakeGcs(tmp_path_factory.mktemp("gcs") / "data", project=PROJECT) as emulator:
        emulator.create_bucket(BUCKET)
        yield emulator


@pytest.fixture(scope="module")
def gcp(tmp_path_factory, gcs: FakeGcs) -> Iterator[FakeGcp]:
    with FakeGcp(tmp_path_factory.mktemp("gcp"), gcs=gcs) as fake:
        yield fake
        assert not fake.errors, fake.errors  # every response parsed as the real proto
    assert not fake.processes_alive()


@pytest.fixture(scope="module")
def cluster(gcp: FakeGcp, gcs: FakeGcs, tmp_path_factory, request) -> Iterator[AirflowCluster]:
    name, value = gcp.airflow_conn(CONN_ID, PROJECT)
    airflow = AirflowCluster(tmp_path_factory.mktemp("cluster"), extra_env={
        name: value, **gcs.env(), "SPOT_CLUSTER_GCP_ENDPOINT": gcp.endpoint, "SPOT_CLUSTER_GCP_PROJECT": PROJECT,
        "SPOT_CLUSTER_GCP_BUCKET": BUCKET, "SPOT_CLUSTER_GCP_CONN_ID": CONN_ID,
    })
    with running(airflow, TIMINGS):
        yield airflow
    print_timings(request, "GCP recovery timings", TIMINGS)


@pytest.fixture(autouse=True)
def logs_on_failure(cluster: AirflowCluster, request, capsys) -> Iterator[None]:
    yield from logs_after_failure(cluster, request, capsys)


record, info = TIMINGS.record, TIMINGS.info


def sweep_args(gcp: FakeGcp) -> list[str]:
    return ["sweep", "--backend", "gcp", "--conn-id", CONN_ID, "--option", f"project_id={PROJECT}",
            "--option", f"api_endpoint={gcp.endpoint}"]


# -- the cloud, by the job's labels ------------------------------------------------------------------------
def clients(gcp: FakeGcp) -> tuple[Any, Any, Any]:
    kwargs = {"credentials": AnonymousCredentials(), "transport": "rest", "client_options": gcp.client_options()}
    return (compute_v1.InstancesClient(**kwargs), compute_v1.DisksClient(**kwargs),
            compute_v1.GlobalOperationsClient(**kwargs))


def job_filter(dag_id: str, run_id: str) -> str:
    # Run ids are no valid label values: the backend labels them with label_value's readable hash.
    return f'labels.spot-dag-id = "{label_value(dag_id)}" AND labels.spot-run-id = "{label_value(run_id)}"'


def vms(gcp: FakeGcp, dag_id: str, run_id: str, role: str | None = None) -> list[dict[str, str]]:
    """Every VM on record with the job's labels (GCE keeps stopped VMs, not deleted ones)."""
    text = job_filter(dag_id, run_id) + (f' AND labels.spot-role = "{role}"' if role else "")
    pages = clients(gcp)[0].aggregated_list(request={"project": PROJECT, "filter": text})
    return [{"id": f"{scope.rsplit('/', 1)[-1]}/{inst.name}", "zone": scope.rsplit("/", 1)[-1], "name": inst.name,
             "status": inst.status} for scope, scoped in pages for inst in scoped.instances]


def disks(gcp: FakeGcp, dag_id: str, run_id: str) -> list[str]:
    pages = clients(gcp)[1].aggregated_list(request={"project": PROJECT, "filter": job_filter(dag_id, run_id)})
    return [f"{scope.rsplit('/', 1)[-1]}/{disk.name}" for scope, scoped in pages for disk in scoped.disks]


def leftovers(gcp: FakeGcp, dag_id: str, run_id: str) -> list[str]:
    """Whatever carries the job's labels: any VM (even TERMINATED), boot or data disk."""
    return [f"vm {vm['id']} ({vm['status']})" for vm in vms(gcp, dag_id, run_id)] + \
        [f"disk {disk}" for disk in disks(gcp, dag_id, run_id)]


def inserted_vms(gcp: FakeGcp) -> list[str]:
    """Names of every VM ever inserted, oldest first, from the cloud's record of operations."""
    pages = clients(gcp)[2].aggregated_list(request={"project": PROJECT})
    ops = [op for _, scoped in pages for op in scoped.operations
           if op.operation_type == "insert" and "/instances/" in op.target_link]
    return [op.target_link.rsplit("/", 1)[-1] for op in sorted(ops, key=lambda op: op.insert_time)]


def vm_running(gcp: FakeGcp, vm: dict[str, str]) -> bool:
    """GCE says RUNNING and the runner still runs its startup script's processes."""
    resource = gcp.instance(PROJECT, vm["zone"], vm["name"])
    return bool(resource and resource["status"] == "RUNNING" and gcp.processes_alive())


def cleanup_run(gcp: FakeGcp, dag_id: str, run_id: str) -> None:
    """Remove whatever a failed scenario left, so the next scenarios start clean."""
    instances, disk_client, _ = clients(gcp)
    for vm in vms(gcp, dag_id, run_id):
        with contextlib.suppress(exceptions.NotFound):
            instances.delete(project=PROJECT, zone=vm["zone"], instance=vm["name"]).result(timeout=30)
    for disk in disks(gcp, dag_id, run_id):
        zone, name = disk.split("/")
        with contextlib.suppress(exceptions.NotFound, exceptions.BadRequest):  # the fake's close ends it anyway
            disk_client.delete(project=PROJECT, zone=zone, disk=name).result(timeout=30)


# -- Airflow -----------------------------------------------------------------------------------------------
def live_attempt(cluster: AirflowCluster, gcp: FakeGcp, dag_id: str, run_id: str,
                 timeout: float = 120) -> dict[str, str]:
    """Wait until the task is deferred on a running attempt VM; return that VM."""
    cluster.wait_for_state(dag_id, run_id, ("deferred",), timeout)
    live = wait_for(lambda: [vm for vm in vms(gcp, dag_id, run_id, "attempt") if vm_running(gcp, vm)],
                    60, interval=0.25, what=f"a running attempt VM of {dag_id}")
    assert len(live) == 1, live
    return live[0]






# -- 1. triggerer restart ------------------------------------------------------------------------------------
def test_triggerer_killed_while_deferred_one_gcp_attempt_finishes(cluster, gcp, capsys):
    dag_id = "spot_cluster_gcp_triggerer_restart"
    inserted_before = len(inserted_vms(gcp))
    run_id = cluster.trigger(dag_id)
    try:
        vm = live_attempt(cluster, gcp, dag_id, run_id)
        holder = cluster.running_holder(dag_id, run_id)
        old = cluster.triggerer(holder[1])
        assert old is not None, f"trigger held by unknown triggerer job {holder[1]}"

        killed = time.monotonic()
        cluster.kill(old, signal.SIGKILL)
        assert vm_running(gcp, vm), "the attempt VM died with the triggerer"
        new = cluster.start_triggerer()

        cluster.wait_taken_over(dag_id, run_id, new)
        record(capsys, "1. triggerer SIGKILL -> trigger running in the new triggerer", time.monotonic() - killed)
        cluster.wait_for_state(dag_id, run_id, ("success", "failed", "up_for_retry"), 180)
        record(capsys, "1. triggerer SIGKILL -> task success", time.monotonic() - killed)

        assert cluster.ti_state(dag_id, run_id) == "success"
        assert cluster.try_number(dag_id, run_id) == 1
        created = inserted_vms(gcp)[inserted_before:]
        attempts_created = [name for name in created if not name.endswith("-backup")]
        assert attempts_created == [vm["name"]], created
        job, attempts = cluster.ledger(dag_id, run_id)
        assert job.get("attempts") == 1 and len(attempts) == 1, attempts
        assert attempts[0]["instance_id"] == vm["id"] and attempts[0]["status"] == "succeeded", attempts[0]
        summary = cluster.xcom(dag_id, run_id)
        assert summary is not None and [a["instance_id"] for a in summary["attempts"]] == [vm["id"]], summary
        wait_for(lambda: not leftovers(gcp, dag_id, run_id), 30, interval=0.25,
                 what="the finished job's VM and disks to be deleted")
        info(capsys, f"one attempt VM {vm['id']}; helpers inserted: {len(created) - len(attempts_created)}")
    finally:
        cleanup_run(gcp, dag_id, run_id)


# -- 2. mark failed while deferred -------------------------------------------------------------------------------
def test_mark_failed_while_deferred_deletes_vm_and_data_disk(cluster, gcp, capsys):
    dag_id = "spot_cluster_gcp_mark_failed"
    run_id = cluster.trigger(dag_id)
    try:
        vm = live_attempt(cluster, gcp, dag_id, run_id)
        holder = cluster.ready_holder(dag_id, run_id)
        assert f"{vm['id']}-data" in disks(gcp, dag_id, run_id), "the attempt has no labelled data disk"

        marked = time.monotonic()
        cluster.set_ti_state(dag_id, run_id, "failed")
        wait_for(lambda: not leftovers(gcp, dag_id, run_id), RELEASE_DEADLINE, interval=0.25,
                 what="the VM and its data disk to be deleted after mark-failed")
        record(capsys, "2. mark failed -> GCE VM and data disk deleted", time.monotonic() - marked)
        assert gcp.instance(PROJECT, vm["zone"], vm["name"]) is None
        assert cluster.ti_state(dag_id, run_id) == "failed"
        # The trigger's on_kill did it (not the sweep or a worker): its log says so.
        wait_for(lambda: "on_kill: terminating" in cluster.trigger_log(dag_id, run_id, holder[1]), 60,
                 what="the trigger's on_kill to log the termination")
    finally:
        cleanup_run(gcp, dag_id, run_id)


# -- 3. Airflow crashes, the sweep cleans up (kills the cluster: runs last) -------------------------------------------
def test_sweep_after_airflow_crash_removes_vm_and_disk(cluster, gcp, capsys):
    dag_id = "spot_cluster_gcp_sweep"
    run_id = cluster.trigger(dag_id)
    args = sweep_args(gcp)
    try:
        vm = live_attempt(cluster, gcp, dag_id, run_id)
        data_disk = f"{vm['id']}-data"
        assert data_disk in disks(gcp, dag_id, run_id)
        crashed = time.monotonic()
        cluster.kill_all()
        time.sleep(1)
        assert vm_running(gcp, vm), "the attempt VM should outlive Airflow"
        # Right after a crash the metadata DB still looks live; the sweep calls the job orphaned only once
        # Airflow's heartbeats are older than its health threshold.
        cluster.wait_until_down()
        record(capsys, "3. Airflow SIGKILL -> heartbeats past the health threshold", time.monotonic() - crashed)

        dry = cluster.run_cli(args)
        assert dry.returncode == 0, dry.stderr
        assert vm["id"] in dry.stdout, f"dry run did not list the orphan:\n{dry.stdout}{dry.stderr}"
        assert vm_running(gcp, vm) and data_disk in disks(gcp, dag_id, run_id), "the dry run deleted something"

        started = time.monotonic()
        delete = cluster.run_cli([*args, "--delete"])
        assert delete.returncode == 0, delete.stderr
        assert vm["id"] in delete.stdout, delete.stdout
        assert leftovers(gcp, dag_id, run_id) == [], delete.stdout
        assert gcp.instance(PROJECT, vm["zone"], vm["name"]) is None
        record(capsys, "3. sweep --delete (VM and data disk deleted)", time.monotonic() - started)
        info(capsys, f"sweep --delete said:\n{delete.stdout.rstrip()}")

        again = cluster.run_cli([*args, "--delete"])
        assert again.returncode == 0, again.stderr
        assert "nothing to sweep" in again.stdout and vm["name"] not in again.stdout, again.stdout
    finally:
        cleanup_run(gcp, dag_id, run_id)
