"""The GCP backend end to end against the offline Google Cloud (tests/gcp_cloud.py): real google-cloud-compute
REST clients with service-account credentials from an Airflow connection, real startup scripts run as local
"VMs" with a metadata server, real agent and training, GCS from gcp-storage-emulator."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from airflow_spot_provider.attempt import InstanceState, Markers, classify
from airflow_spot_provider.backends.base import BackupSaveRequest, JobIdentity, LaunchError, LaunchRequest
from airflow_spot_provider.backends.gcp import DATA_DEVICE, data_disk_name, helper_name

from .chaos import Chaos
from .e2e import assert_bit_identical, baseline_model, run_job, train_command
from .gcp_cloud import FakeGcp, FakeGcs
from .test_on_kill import HelperTaskEnded, TaskEnded, stalled_python, start_on_kill
from .waiting import wait_for

CONN_ID = "spot_gcp"
PROJECT = "spot-project"
BUCKET = "ckpt"
SECRET = "conn-secret-5d1e8b2a-marker"
TYPE = "n1-standard-4"
ZONES = ["us-central1-a", "us-central1-b"]
IMAGE = "projects/debian-cloud/global/images/family/debian-12"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    emulator = FakeGcs(tmp_path_factory.mktemp("gcs") / "data", project=PROJECT)
    saved = {k: os.environ.get(k) for k in emulator.env()}
    os.environ.update(emulator.env())
    emulator.create_bucket(BUCKET)
    yield emulator
    emulator.close()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def gcp(tmp_path_factory, gcs):
    fake = FakeGcp(tmp_path_factory.mktemp("gcp"), gcs=gcs)
    name, value = fake.airflow_conn(CONN_ID, PROJECT, secret_marker=SECRET)
    os.environ[name] = value
    try:
        yield fake
    finally:
        os.environ.pop(name, None)
        fake.close()
    assert not fake.processes_alive()
    assert not fake.errors  # every response parsed as the real proto


def options(gcp: FakeGcp, **extra):
    # The "image" is this Python environment: the agent is installed already (agent_install=[]).
    return {"project_id": PROJECT, "api_endpoint": gcp.endpoint, "python": sys.executable, "agent_install": [],
            "wait_timeout": 60, **extra}


def backend(gcp: FakeGcp, **extra):
    from airflow_spot_provider.backends.gcp import GcpBackend

    return GcpBackend(conn_id=CONN_ID, **options(gcp, **extra))


def request(prefix: str, command: list[str], attempt: int = 1, identity: JobIdentity | None = None,
            **kw) -> LaunchRequest:
    return LaunchRequest(
        identity=identity or JobIdentity("dag", "run", prefix, -1, "nonce"), attempt=attempt, command=command,
        resume_args=[], env={}, checkpoint_uri=f"gs://{BUCKET}/{prefix}/", checkpoint_pattern=r"(?P<step>\d+)",
        sync_interval=kw.pop("sync_interval", 0.5), instance_type=kw.pop("instance_type", TYPE),
        zone=kw.pop("zone", ZONES[0]), image=IMAGE, **kw,
    )


def store_of(uri: str):
    from airflow_spot_provider.checkpoints.objectstorage import store_for

    return store_for(uri, CONN_ID)  # the Airflow side: the connection's key, the emulator's endpoint


def api(gcp: FakeGcp):
    kwargs = {"credentials": AnonymousCredentials(), "transport": "rest", "client_options": gcp.client_options()}
    return (compute_v1.InstancesClient(**kwargs), compute_v1.DisksClient(**kwargs),
            compute_v1.SnapshotsClient(**kwargs))


def labelled(gcp: FakeGcp, task_id: str, role: str | None = None, status: str | None = None) -> list[tuple[str, str]]:
    """(zone, name) of every VM carrying this job's labels."""
    instances, _, _ = api(gcp)
    text = f'labels.spot-task-id = "{task_id}"' + (f' AND labels.spot-role = "{role}"' if role else "")
    if status:
        text += f' AND status = "{status}"'
    pages = instances.aggregated_list(request={"project": PROJECT, "filter": text})
    return [(scope.rsplit("/", 1)[-1], inst.name) for scope, scoped in pages for inst in scoped.instances]


def leftovers(gcp: FakeGcp, task_id: str) -> list[str]:
    """Every VM, disk and snapshot that carries this job's labels."""
    _, disks, snapshots = api(gcp)
    text = f'labels.spot-task-id = "{task_id}"'
    found = [f"vm {zone}/{name}" for zone, name in labelled(gcp, task_id)]
    found += [f"disk {d.name}" for _, scoped in disks.aggregated_list(request={"project": PROJECT, "filter": text})
              for d in scoped.disks]
    found += [f"snapshot {s.name}" for s in snapshots.list(request={"project": PROJECT, "filter": text})]
    return found


def chaos(gcp: FakeGcp, task_id: str, plan: dict[int, tuple[int, float | None]]) -> Chaos:
    """Reclaims the job's attempts on ``plan`` (see tests/chaos.py)."""
    def running() -> list[tuple[str, int]]:
        return [(f"{zone}/{name}", int(gcp.instance(PROJECT, zone, name)["labels"]["spot-attempt"]))
                for zone, name in labelled(gcp, task_id, "attempt", "RUNNING")]

    def preempt(instance_id: str, notice: float | None) -> None:
        zone, name = instance_id.split("/")
        gcp.preempt(PROJECT, zone, name, notice_seconds=notice)

    def checkpoints(instance_id: str) -> Path:
        return gcp.root / "vms" / instance_id.split("/")[1] / "root" / "data" / "checkpoints"

    return Chaos(running, checkpoints, preempt, plan)


def gcp_job(gcp: FakeGcp, task_id: str, **kw):
    return dict(backend="gcp", conn_id=CONN_ID, checkpoint_uri=f"gs://{BUCKET}/{task_id}/",
                machine={"instance_types": [TYPE], "zones": ZONES, "image": IMAGE}, backend_options=options(gcp),
                **kw)


@pytest.mark.usefixtures("airflow_db")
def test_preempted_twice_backup_saved_resumed_bit_identical(gcp, tmp_path, dataset):
    command = train_command(dataset, epochs=8, epoch_seconds=0.5)
    # 1st, at step 200: a notice (GCE's 30 s, here 5 s): the job saves and the agent syncs. 2nd, at step 500: no
    # notice at all, and no periodic sync before it, so its newest checkpoints exist only on the dead VM's disk.
    market = chaos(gcp, "train", {1: (200, 5.0), 2: (500, None)})
    market.start()
    try:
        result = run_job("gcp_two_preemptions", tmp_path, command, max_preemptions=3, poll_interval=0.3,
                         **{**gcp_job(gcp, "train"), "sync_interval": 600.0})
    finally:
        market.stop.set()
        market.join()
    assert result["state"] == "success" and result["try_number"] == 1
    attempts = result["summary"]["attempts"]
    assert [a["status"] for a in attempts] == ["preempted", "preempted", "succeeded"]
    # The cloud's own record decides both: a compute.instances.preempted zone operation (the soft-off SIGTERM
    # reaches the job and the agent at once, so the agent's notice marker is not guaranteed).
    assert all("compute.instances.preempted" in a["reason"] for a in attempts[:2])
    # 1st: the job saved on SIGTERM; the agent's final sync (or, had the hard-off come first, the helper) kept it.
    assert attempts[0]["final_synced"] or attempts[0]["backup_save"]["uploaded"]
    assert attempts[1]["notice_at"] is None and not attempts[1]["final_synced"]
    assert attempts[1]["backup_save"]["uploaded"]  # the helper VM recovered files from the data disk
    zone, name = attempts[1]["instance_id"].split("/")
    assert attempts[1]["backup_save"]["helper_id"] == f"{zone}/{helper_name(name)}"
    for before, after in zip(attempts, attempts[1:], strict=False):
        assert after["restored_from"] == before["last_checkpoint"] is not None
    assert all(a["price_per_hour"] == 0.04 and a["on_demand_price_per_hour"] == 0.19 for a in attempts)
    assert all(a["market"] == "spot" and a["instance_type"] == TYPE for a in attempts)
    store = store_of(f"gs://{BUCKET}/train/")
    model = tmp_path / "model.npz"
    model.write_bytes(store.fs.cat_file(store.path("model.npz")))
    assert_bit_identical(model, baseline_model(tmp_path, command))
    assert leftovers(gcp, "train") == []


def test_no_notice_no_final_sync_helper_backup_save_recovers(gcp):
    """A VM killed without warning before any sync: only the helper VM can save its files."""
    be = backend(gcp)
    script = ("import os, pathlib, time\n"
              "d = pathlib.Path(os.environ['SPOT_CHECKPOINT_DIR'])\n"
              "for step in (1, 2, 3):\n"
              "    (d / f'ckpt-{step:08d}').write_bytes(os.urandom(2048) + bytes([step]))\n"
              "time.sleep(600)\n")
    req = request("nonotice", [sys.executable, "-c", script], sync_interval=600)
    facts = be.launch(req)
    zone, name = facts.instance_id.split("/")
    disk_dir = gcp.disk_dir(zone, f"{name}-data") / "checkpoints"
    wait_for(lambda: (disk_dir / "ckpt-00000003").exists())
    gcp.preempt(PROJECT, zone, name, notice_seconds=None)
    gcp.wait_status(PROJECT, zone, name, "TERMINATED")
    store = store_of(req.checkpoint_uri)
    assert store.read_manifest().files == {}  # nothing reached GCS from the VM itself
    dead = asyncio.run(be.describe([facts.instance_id]))[facts.instance_id]
    assert dead.state is InstanceState.TERMINATED and dead.preempted
    assert classify(dead, Markers(store.read_markers(1))).status.value == "preempted"

    be.terminate(facts.instance_id)
    saving = BackupSaveRequest(facts.instance_id, 1, req.checkpoint_uri, r"(?P<step>\d+)")
    started = be.backup_save(saving)
    assert started.helper_id and started.helper_id != facts.instance_id
    assert be.backup_save(saving).helper_id == started.helper_id
    helper = gcp.instance(PROJECT, zone, started.helper_id.split("/")[1])
    assert helper["labels"]["spot-role"] == "backup-save" and helper["scheduling"]["provisioningModel"] == "STANDARD"
    assert [d["mode"] for d in helper["disks"] if d["deviceName"] == "spot-data"] == ["READ_ONLY"]
    marker = wait_for(lambda: store.read_markers(1).get("backup-save"), 60)
    result = be.finish_backup_save(facts.instance_id, started.helper_id, marker)
    assert result.error is None and result.latest == "ckpt-00000003"
    for step in (1, 2, 3):
        name_ = f"ckpt-{step:08d}"
        assert store.fs.cat_file(store.path(name_)) == (disk_dir / name_).read_bytes()
    be.release(facts.instance_id)
    assert leftovers(gcp, "nonotice") == []
    assert be.backup_save(saving).skipped  # nothing left to read


def test_capacity_error_moves_to_next_zone_and_throttling_is_retried(gcp):
    be = backend(gcp)
    gcp.fail_insert("ZONE_RESOURCE_POOL_EXHAUSTED", zone=ZONES[0], machine_type=TYPE, times=1)
    with pytest.raises(LaunchError) as err:
        be.launch(request("capacity", [sys.executable, "-c", "pass"]))
    assert err.value.code == "ZONE_RESOURCE_POOL_EXHAUSTED" and err.value.move_on
    assert labelled(gcp, "capacity") == []  # nothing was created in the full zone
    # The operator's next call goes to the next placement, with its own launch token.
    facts = be.launch(request("capacity", [sys.executable, "-c", "pass"], zone=ZONES[1], launch_try=1))
    assert facts.zone == ZONES[1] and facts.instance_id.startswith(f"{ZONES[1]}/")

    gcp.fail_insert("QUOTA_EXCEEDED", machine_type="g2-standard-8", times=1)
    with pytest.raises(LaunchError) as quota:
        be.launch(request("quota", [sys.executable, "-c", "pass"], instance_type="g2-standard-8"))
    assert quota.value.code == "QUOTA_EXCEEDED" and quota.value.move_on

    gcp.fail_insert("rateLimitExceeded", times=1)
    with pytest.raises(LaunchError) as limited:
        be.launch(request("throttled", [sys.executable, "-c", "pass"]))
    assert limited.value.code == "rateLimitExceeded" and not limited.value.move_on  # same placement, later
    facts = be.launch(request("throttled", [sys.executable, "-c", "pass"], launch_try=1))
    assert facts.state in (InstanceState.PENDING, InstanceState.RUNNING) and facts.zone == ZONES[0]
    for prefix in ("capacity", "quota", "throttled"):
        for zone, name in labelled(gcp, prefix, "attempt"):
            be.terminate(f"{zone}/{name}")
            be.release(f"{zone}/{name}")
        assert leftovers(gcp, prefix) == []


@pytest.mark.usefixtures("airflow_db")
def test_job_waits_for_capacity_on_a_timer_then_lands(gcp, tmp_path, dataset):
    # Every placement is refused once: one full round, then a timer deferral (no worker slot), then it lands.
    gcp.fail_insert("ZONE_RESOURCE_POOL_EXHAUSTED", times=2)
    result = run_job("gcp_capacity_wait", tmp_path, train_command(dataset, epochs=2), poll_interval=0.3,
                     capacity_retry_delay=0.5, **gcp_job(gcp, "capacity_job"))
    assert result["state"] == "success"
    (attempt,) = result["summary"]["attempts"]
    assert [e["zone"] for e in attempt["launch_errors"]] == ZONES
    assert all(e["code"] == "ZONE_RESOURCE_POOL_EXHAUSTED" for e in attempt["launch_errors"])
    assert attempt["capacity_waits"] == 1 and attempt["status"] == "succeeded" and attempt["zone"] == ZONES[0]
    assert leftovers(gcp, "capacity_job") == []


def test_repeated_launch_with_the_same_identity_creates_one_instance(gcp):
    from airflow_spot_provider.backends.gcp import request_id

    be = backend(gcp)
    # Ids GCE labels cannot hold as they are (upper case, ':', '+', '.'): labels stay valid and findable.
    identity = JobIdentity("Nightly.Retrain", "manual__2026-01-01T00:00:00+00:00", "idem", 3, "nonce")
    req = request("idem", [sys.executable, "-c", "import time; time.sleep(30)"], identity=identity)
    first = be.launch(req)
    again = be.launch(req)
    retried = be.launch(LaunchRequest(**{**req.__dict__, "launch_try": 3}))
    assert first.instance_id == again.instance_id == retried.instance_id
    assert be.find(req).instance_id == first.instance_id
    # The very same insert again (a lost response, retried): the same requestId, so no second VM and no error.
    instances, _, _ = api(gcp)
    body = be.insert_body(req)
    instances.insert(request={"project": PROJECT, "zone": req.zone, "instance_resource": body,
                              "request_id": request_id(req.call_token, req.zone, req.instance_type)}).result()
    assert labelled(gcp, "idem") == [tuple(first.instance_id.split("/"))]
    vm = gcp.instance(PROJECT, *first.instance_id.split("/"))
    assert vm["labels"]["spot-token"] == req.token and vm["labels"]["spot-map-index"] == "3"
    assert vm["labels"]["spot-dag-id"].startswith("nightly_retrain-")
    assert vm["scheduling"]["provisioningModel"] == "SPOT" and vm["scheduling"]["instanceTerminationAction"] == "STOP"
    data = next(d for d in vm["disks"] if d["deviceName"] == "spot-data")
    assert data["autoDelete"] is False and next(d for d in vm["disks"] if d["boot"])["autoDelete"] is True
    (listed,) = [i for i in be.list_instances() if i.instance_id == first.instance_id]
    assert listed.tags["spot-dag-id"] == "Nightly.Retrain" and listed.has_disk and listed.role == "attempt"
    be.terminate(first.instance_id)
    assert gcp.instance(PROJECT, *first.instance_id.split("/"))["status"] == "TERMINATED"
    be.release(first.instance_id)
    assert leftovers(gcp, "idem") == []


def test_orphan_data_disk_is_listed_and_swept(gcp):
    be = backend(gcp)
    facts = be.launch(request("orphan", [sys.executable, "-c", "pass"]))
    zone, name = facts.instance_id.split("/")
    instances, _, _ = api(gcp)
    instances.delete(project=PROJECT, zone=zone, instance=name).result()  # the VM went, its disk stayed
    (orphan,) = [i for i in be.list_instances() if i.tags.get("spot-task-id") == "orphan"]
    assert orphan.instance_id is None and orphan.disk_id == f"{zone}/{name}-data" and orphan.has_disk
    be.sweep_delete(orphan)
    assert leftovers(gcp, "orphan") == []


def test_lost_instance_is_lost_not_preempted(gcp):
    be = backend(gcp)
    facts = be.launch(request("lost", [sys.executable, "-c", "import time; time.sleep(30)"]))
    zone, name = facts.instance_id.split("/")
    gcp.wait_status(PROJECT, zone, name, "RUNNING")
    gcp.lose(PROJECT, zone, name, operation_type="compute.instances.hostError")
    unknown = f"{zone}/spot-0000000000000000-1-0"
    dead = asyncio.run(be.describe([facts.instance_id, unknown, "not-an-id"]))
    assert dead[facts.instance_id].state is InstanceState.TERMINATED and not dead[facts.instance_id].preempted
    assert dead[facts.instance_id].reason == "compute.instances.hostError"
    assert classify(dead[facts.instance_id], Markers()).status.value == "lost"
    assert dead[unknown].state is InstanceState.MISSING and dead["not-an-id"].state is InstanceState.MISSING
    be.terminate(facts.instance_id)
    be.release(facts.instance_id)
    assert leftovers(gcp, "lost") == []


def test_vm_that_powers_off_before_its_agent_starts_is_a_failed_boot(gcp):
    """No Python on the image: the startup script cannot start the agent and powers off. Relaunching would
    fail the same way, so this is a failure (a retry), not a lost VM (a free relaunch)."""
    be = backend(gcp, python="/nonexistent/python3")
    facts = be.launch(request("badboot", [sys.executable, "-c", "pass"]))
    zone, name = facts.instance_id.split("/")
    gcp.wait_status(PROJECT, zone, name, "TERMINATED")
    dead = asyncio.run(be.describe([facts.instance_id]))[facts.instance_id]
    verdict = classify(dead, Markers(store_of(f"gs://{BUCKET}/badboot/").read_markers(1)))
    assert verdict.status.value == "failed" and "before the agent started" in verdict.reason
    be.terminate(facts.instance_id)
    be.release(facts.instance_id)
    assert leftovers(gcp, "badboot") == []


def test_startup_script_carries_no_secret_and_quotes_the_command(gcp):
    be = backend(gcp)
    nasty = ["python", "-c", "print('x')", "; rm -rf / #", "$(id)", "`whoami`"]
    req = request("secret", nasty)
    text = be.boot_script(req)
    assert SECRET not in text and "private_key" not in text
    # The command reaches the VM inside a quoted heredoc of JSON: no shell expansion of its words.
    assert "<<'SPOT_JSON_EOF'" in text and '"; rm -rf / #"' in text
    assert json.loads(text.split("<<'SPOT_JSON_EOF'\n")[1].split("\n")[0])["notice"] == {"source": "gce-metadata"}
    body = json.dumps(be.insert_body(req))
    assert SECRET not in body and "private_key" not in body
    assert be.insert_body(req)["service_accounts"][0]["email"] == "default"  # the VM's own identity


def test_validation():
    from airflow_spot_provider.backends.gcp import GcpBackend, label_value
    from airflow_spot_provider.spec import machine_from

    with pytest.raises(ValueError, match="backend_options"):
        GcpBackend(conn_id=CONN_ID, region_name="us-east-1")
    with pytest.raises(ValueError, match="wait_timeout"):
        GcpBackend(conn_id=CONN_ID, wait_timeout=0)
    be = GcpBackend(conn_id=CONN_ID, project_id=PROJECT)
    be.validate_machine(machine_from({"instance_types": ["g2-standard-8"], "zones": ["europe-west4-b"],
                                      "image": IMAGE}))
    for bad, field in [({"instance_types": ["m5.large"], "zones": ZONES, "image": IMAGE}, "instance_types"),
                       ({"instance_types": [TYPE], "zones": ["us-east-1a"], "image": IMAGE}, "zones"),
                       ({"instance_types": [TYPE], "zones": ZONES, "image": "ami-0123"}, "image")]:
        with pytest.raises(ValueError, match=field):
            be.validate_machine(machine_from(bad))
    assert label_value("train") == "train"
    assert label_value("A" * 80) == label_value("A" * 80) and len(label_value("A" * 80)) == 63
    assert label_value("a.b") != label_value("a:b")


def data_disk(gcp: FakeGcp, zone: str, name: str) -> dict:
    """The VM's attached disk with the data device name."""
    return next(d for d in gcp.instance(PROJECT, zone, name)["disks"] if d["deviceName"] == DATA_DEVICE)


def test_on_kill_leaves_the_disk_to_gce_and_returns_while_the_vm_is_deleted(gcp):
    """on_kill has 30 s and a GCE delete takes tens of seconds: the data disk is set to autoDelete and the
    delete operation is not waited for. The fake holds the deletion until on_kill has returned."""
    be = backend(gcp)
    req = request("killed", [sys.executable, "-c", "import time; time.sleep(600)"])
    instance_id = be.launch(req).instance_id
    zone, name = instance_id.split("/")
    gcp.wait_status(PROJECT, zone, name, "RUNNING")
    assert data_disk(gcp, zone, name)["autoDelete"] is False  # as launched: the disk outlives the VM
    gcp.hold_deletion(PROJECT, zone, name)
    killing = start_on_kill(TaskEnded(backend=be.serialize(), instance_id=instance_id, attempt=1,
                                      checkpoint_uri=req.checkpoint_uri, conn_id=CONN_ID))
    try:
        wait_for(killing.done, 60, what="on_kill to return while GCE still deletes the VM")
        killing.result()
        assert gcp.instance(PROJECT, zone, name)["status"] == "STOPPING"
        assert data_disk(gcp, zone, name)["autoDelete"] is True
    finally:
        gcp.finish_deletion(PROJECT, zone, name)
    wait_for(lambda: leftovers(gcp, "killed") == [], what="GCE to delete the data disk with the VM")


def test_on_kill_of_a_backup_save_helper_keeps_the_disk_it_copies(gcp, tmp_path):
    """A helper killed mid-copy goes alone, without waiting: the disk holds checkpoints no store has yet."""
    be = backend(gcp, python=stalled_python(tmp_path))
    req = request("helperkill", [sys.executable, "-c", "pass"])
    instance_id = be.launch(req).instance_id
    zone, name = instance_id.split("/")
    gcp.wait_status(PROJECT, zone, name, "RUNNING")
    unsaved = gcp.disk_dir(zone, data_disk_name(name)) / "checkpoints" / "ckpt-00000001"
    unsaved.parent.mkdir(parents=True, exist_ok=True)
    unsaved.write_bytes(b"written after the last sync")
    helper = be.backup_save(BackupSaveRequest(instance_id, 1, req.checkpoint_uri, r"(?P<step>\d+)")).helper_id
    assert helper == f"{zone}/{helper_name(name)}"
    assert data_disk(gcp, zone, helper_name(name))["source"].endswith(f"/disks/{data_disk_name(name)}")
    gcp.hold_deletion(PROJECT, zone, helper_name(name))
    killing = start_on_kill(HelperTaskEnded(backend=be.serialize(), instance_id=helper, attempt=1,
                                            checkpoint_uri=req.checkpoint_uri, conn_id=CONN_ID))
    try:
        wait_for(killing.done, 60, what="on_kill to return while GCE still deletes the helper")
        killing.result()
        assert gcp.instance(PROJECT, zone, helper_name(name))["status"] == "STOPPING"
        assert data_disk(gcp, zone, helper_name(name))["autoDelete"] is False
    finally:
        gcp.finish_deletion(PROJECT, zone, helper_name(name))
    assert gcp.instance(PROJECT, zone, helper_name(name)) is None
    assert f"disk {data_disk_name(name)}" in leftovers(gcp, "helperkill")
    assert unsaved.read_bytes() == b"written after the last sync"
    be.release(instance_id)
    assert leftovers(gcp, "helperkill") == []


def test_cancel_of_a_vm_already_gone_deletes_its_disk(gcp):
    be = backend(gcp)
    instance_id = be.launch(request("alreadygone", [sys.executable, "-c", "import time; time.sleep(600)"])).instance_id
    zone, name = instance_id.split("/")
    gcp.wait_status(PROJECT, zone, name, "RUNNING")
    gcp.lose(PROJECT, zone, name, delete=True)
    assert leftovers(gcp, "alreadygone") == [f"disk {data_disk_name(name)}"]  # it outlives its VM
    be.cancel(instance_id)
    assert leftovers(gcp, "alreadygone") == []


def test_module_leaves_no_vm_behind(gcp):
    """Every test above cleaned up after itself: no VM of any job is left in the fake cloud."""
    instances, _, _ = api(gcp)
    pages = instances.aggregated_list(request={"project": PROJECT, "filter": 'labels.spot-provider:*'})
    assert [i.name for _, scoped in pages for i in scoped.instances] == []
    assert Path(gcp.root).is_dir()
