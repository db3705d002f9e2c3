"""One list of backend scenarios, run against every cloud it applies to: the local backend, AWS (moto and a VM
runner, tests/aws_cloud.py) and GCP (a Compute Engine API and the GCS emulator, tests/gcp_fake). Real clients,
real boot scripts run as local "VMs", real agent and training. What differs per cloud (requests, codes, prices,
the cloud's own view of a job's resources) is in tests/clouds.py; the scenarios here never ask which cloud
they run on."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_spot_provider.attempt import (
    AttemptStatus,
    InstanceFacts,
    InstanceState,
    Marker,
    Markers,
    classify,
    rehearsal_marker,
)
from airflow_spot_provider.backends.base import BackupSaveRequest, JobIdentity, LaunchError, SpotBackend

from .chaos import Chaos
from .clouds import NAMES, STEP_PATTERN, Cloud, open_cloud, task
from .e2e import assert_bit_identical, baseline_model, run_job, train_command
from .test_on_kill import HelperTaskEnded, TaskEnded, stalled_python, start_on_kill
from .waiting import wait_for

EVERY_CLOUD = pytest.mark.parametrize("cloud", NAMES, indirect=True)
#: The scenarios of the cloud backends alone: launch failures, helper VMs, boot scripts, held terminations.
CLOUDS = pytest.mark.parametrize("cloud", [n for n in NAMES if n != "local"], indirect=True)
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
PASS = [sys.executable, "-c", "pass"]


@pytest.fixture(scope="module")
def cloud(request, tmp_path_factory) -> Iterator[Cloud]:
    with open_cloud(request.param, tmp_path_factory.mktemp(request.param)) as opened:
        yield opened


def describe(backend: SpotBackend, *instance_ids: str) -> dict[str, InstanceFacts]:
    return asyncio.run(backend.describe(list(instance_ids)))


def links(result: dict[str, Any]) -> dict[str, Any]:
    """The task's extra links as pushed to XCom (None: not pushed)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    ti = result["run"].get_task_instance("train")
    found = {}
    with create_session() as session:
        for key in ("spot_attempt_url", "spot_checkpoint_url"):
            row = session.scalars(XComModel.get_many(run_id=ti.run_id, dag_ids=ti.dag_id, task_ids="train",
                                                     key=key)).first()
            found[key] = XComModel.deserialize_value(row) if row is not None else None
    return found


@EVERY_CLOUD
@pytest.mark.usefixtures("airflow_db")
def test_preempted_twice_backup_saved_resumed_bit_identical(cloud, tmp_path, dataset, capfd):
    command = train_command(dataset, epochs=8, epoch_seconds=0.5)
    # 1st, at step 200: a notice: the job saves, the agent syncs and the VM powers off. 2nd, at step 500: no notice
    # at all, and no periodic sync before it, so its newest checkpoints exist only on the dead VM's disk.
    market = Chaos(lambda: cloud.running_attempts(task("train")), lambda i: cloud.fake.data_dir(i) / "checkpoints",
                   lambda i, notice: cloud.fake.preempt(i, notice_seconds=notice),
                   {1: (200, cloud.notice_seconds), 2: (500, None)})
    before = cloud.created()
    market.start()
    try:
        result = run_job(f"{cloud.name}_two_preemptions", tmp_path, command, max_preemptions=3, poll_interval=0.3,
                         **cloud.job("train", sync_interval=600.0))
    finally:
        market.stop.set()
        market.join()
    assert result["state"] == "success" and result["try_number"] == 1
    attempts = result["summary"]["attempts"]
    assert [a["status"] for a in attempts] == ["preempted", "preempted", "succeeded"]
    for attempt, reason in zip(attempts, cloud.preemption_reasons, strict=False):
        assert re.search(reason, attempt["reason"]), attempt["reason"]
    # 1st: the job saved on the notice; the agent's final sync (or, had the kill come first, backup-save) kept it.
    assert attempts[0]["final_synced"] or attempts[0]["backup_save"]["uploaded"]
    assert attempts[0]["notice_at"] is not None or not cloud.notice_recorded
    assert attempts[1]["notice_at"] is None and not attempts[1]["final_synced"]
    assert attempts[1]["backup_save"]["uploaded"]  # recovered from the dead VM's disk
    helper = attempts[1]["backup_save"]["helper_id"]
    assert bool(helper) is cloud.backup_helper
    launched = cloud.created() - before  # the three attempts and the helper, nothing else
    assert launched == {a["instance_id"] for a in attempts} | ({helper} - {None})
    for before_, after in zip(attempts, attempts[1:], strict=False):
        assert after["restored_from"] == before_["last_checkpoint"] is not None
    assert all(a["price_per_hour"] == cloud.spot_price and a["on_demand_price_per_hour"] == cloud.on_demand_price
               for a in attempts)
    assert all(a["market"] == "spot" and a["instance_type"] == cloud.types[0] for a in attempts)
    store = cloud.store(cloud.uri("train/"))
    model = tmp_path / "model.npz"
    model.write_bytes(store.fs.cat_file(store.path("model.npz")))
    assert_bit_identical(model, baseline_model(tmp_path, command))
    assert cloud.leftovers(task("train")) == []
    # The task's extra links: the last attempt's console page and the checkpoint prefix.
    assert links(result) == {"spot_attempt_url": cloud.attempt_url(attempts[-1]["instance_id"]),
                             "spot_checkpoint_url": cloud.checkpoint_url("train/")}
    # The secret is in nothing a VM got (attempts and helper), no task log, console, XCom or ledger entry.
    given = [(cloud.fake.vm_dir(i) / name).read_text() for i in launched for name in cloud.boot_files]
    assert len(given) == len(launched) * len(cloud.boot_files)
    texts = [*given, json.dumps(result["summary"]), capfd.readouterr().out, *map(cloud.fake.console, launched)]
    assert not [t[:60] for t in texts if cloud.secret in t]


@CLOUDS
def test_no_notice_no_final_sync_helper_backup_save_recovers(cloud):
    """A VM killed without warning before any sync: only the helper VM can save its files."""
    be = cloud.backend()
    script = ("import os, pathlib, time\n"
              "d = pathlib.Path(os.environ['SPOT_CHECKPOINT_DIR'])\n"
              "for step in (1, 2, 3):\n"
              "    (d / f'ckpt-{step:08d}').write_bytes(os.urandom(2048) + bytes([step]))\n"
              "time.sleep(600)\n")
    req = cloud.request("nonotice", [sys.executable, "-c", script], sync_interval=600)
    facts = be.launch(req)
    disk = wait_for(lambda: (cloud.fake.data_dir(facts.instance_id) / "checkpoints" / "ckpt-00000003").exists()
                    and cloud.fake.data_dir(facts.instance_id).resolve(), what="the third checkpoint on the disk")
    cloud.fake.preempt(facts.instance_id, notice_seconds=None)
    cloud.fake.wait_gone(facts.instance_id)
    store = cloud.store(req.checkpoint_uri)
    assert store.read_manifest().files == {}  # nothing reached the store from the VM itself
    dead = describe(be, facts.instance_id)[facts.instance_id]
    assert dead.state is InstanceState.TERMINATED and dead.preempted
    assert classify(dead, Markers(store.read_markers(1))).status.value == "preempted"

    be.terminate(facts.instance_id)
    saving = BackupSaveRequest(facts.instance_id, 1, req.checkpoint_uri, STEP_PATTERN)
    started = be.backup_save(saving)
    assert started.helper_id and started.helper_id != facts.instance_id
    assert be.backup_save(saving).helper_id == started.helper_id  # asked again: the same helper
    cloud.assert_helper(started.helper_id, facts.instance_id)
    marker = wait_for(lambda: store.read_markers(1).get("backup-save"), 60)
    result = be.finish_backup_save(facts.instance_id, started.helper_id, marker)
    assert result.error is None and result.latest == "ckpt-00000003"
    for step in (1, 2, 3):
        name = f"ckpt-{step:08d}"
        assert store.fs.cat_file(store.path(name)) == (disk / "checkpoints" / name).read_bytes()
    be.release(facts.instance_id)
    assert cloud.leftovers(task("nonotice")) == []
    assert be.backup_save(saving).skipped  # nothing left to read


@CLOUDS
def test_capacity_error_moves_to_next_zone_and_throttling_is_retried(cloud):
    be = cloud.backend()
    cloud.fake.fail_launch(cloud.capacity_code, instance_type=cloud.types[0], zone=cloud.zones[0], times=1)
    try:
        with pytest.raises(LaunchError) as err:
            be.launch(cloud.request("capacity", PASS))
        assert err.value.code == cloud.capacity_code and err.value.move_on
        assert cloud.vms(task("capacity")) == []  # nothing was created in the full zone
        # The operator's next call goes to the next placement, with its own launch token.
        placed = be.launch(cloud.request("capacity", PASS, zone=cloud.zones[1], launch_try=1))
        assert placed.zone == cloud.zones[1]
        cloud.fake.fail_launch(cloud.quota_code, instance_type=cloud.types[1], times=1)
        with pytest.raises(LaunchError) as quota:
            be.launch(cloud.request("quota", PASS, instance_type=cloud.types[1]))
        assert quota.value.code == cloud.quota_code and quota.value.move_on  # another type may still launch
    finally:
        cloud.fake.clear_failures()

    calls = cloud.launch_calls()
    cloud.fake.throttle(times=1)
    req = cloud.request("throttled", PASS)
    if cloud.throttle_reaches_the_caller:
        with pytest.raises(LaunchError) as limited:
            be.launch(req)
        assert limited.value.code == cloud.throttle_code and not limited.value.move_on  # same placement, later
        req = dataclasses.replace(req, launch_try=1)
    facts = be.launch(req)
    assert facts.state in (InstanceState.PENDING, InstanceState.RUNNING) and facts.zone == cloud.zones[0]
    assert cloud.launch_calls() - calls == 2  # refused once, then accepted
    # By what was launched, not by what the cloud still lists: a VM whose job exits at once may already be gone
    # (EC2 forgets terminated instances), and its data disk is what must not be left behind.
    for instance_id in (placed.instance_id, facts.instance_id):
        be.terminate(instance_id)
        be.release(instance_id)
    for prefix in ("capacity", "quota", "throttled"):
        assert cloud.leftovers(task(prefix)) == []


@CLOUDS
@pytest.mark.usefixtures("airflow_db")
def test_job_waits_for_capacity_on_a_timer_then_lands(cloud, tmp_path, dataset):
    # Every placement is refused once: one full round, then a timer deferral (no worker slot), then it lands.
    cloud.fake.fail_launch(cloud.capacity_code, times=2)
    try:
        result = run_job(f"{cloud.name}_capacity_wait", tmp_path, train_command(dataset, epochs=2), poll_interval=0.3,
                         capacity_retry_delay=0.5, **cloud.job("capacity_job"))
    finally:
        cloud.fake.clear_failures()
    assert result["state"] == "success"
    (attempt,) = result["summary"]["attempts"]
    assert [e["zone"] for e in attempt["launch_errors"]] == list(cloud.zones)
    assert all(e["code"] == cloud.capacity_code for e in attempt["launch_errors"])
    assert attempt["capacity_waits"] == 1 and attempt["status"] == "succeeded" and attempt["zone"] == cloud.zones[0]
    assert cloud.leftovers(task("capacity_job")) == []


@EVERY_CLOUD
def test_repeated_launch_with_the_same_identity_creates_one_instance(cloud):
    be = cloud.backend()
    # Ids GCE labels cannot hold as they are (upper case, ':', '+', '.'): tags stay valid and findable.
    identity = JobIdentity("Nightly.Retrain", "manual__2026-01-01T00:00:00+00:00", "idem", 3, "nonce")
    req = cloud.request("idem", SLEEPER, identity=identity)
    first = be.launch(req)
    again = be.launch(req)
    retried = be.launch(dataclasses.replace(req, launch_try=3))
    assert first.instance_id == again.instance_id == retried.instance_id
    assert be.find(req).instance_id == first.instance_id
    assert cloud.vms(task("idem")) == [first.instance_id]
    (listed,) = [i for i in be.list_instances() if i.instance_id == first.instance_id]
    assert listed.tags["spot-dag-id"] == "Nightly.Retrain" and listed.has_disk and listed.role == "attempt"
    be.terminate(first.instance_id)
    assert describe(be, first.instance_id)[first.instance_id].state is InstanceState.TERMINATED
    be.release(first.instance_id)
    assert cloud.leftovers(task("idem")) == []


@EVERY_CLOUD
def test_lost_instance_is_lost_not_preempted(cloud):
    be = cloud.backend()
    facts = be.launch(cloud.request("lost", SLEEPER))
    wait_for(lambda: cloud.vm_running(facts.instance_id), 60, what="the VM to run")
    cloud.lose(facts.instance_id)
    cloud.fake.wait_gone(facts.instance_id)
    unknown = [cloud.unknown_id, "not-an-id"]
    dead = describe(be, facts.instance_id, *unknown)
    lost = dead[facts.instance_id]
    assert lost.state is cloud.lost_state and not lost.preempted
    assert re.search(cloud.lost_reason, lost.reason), lost.reason
    assert classify(lost, Markers()).status.value == "lost"
    assert [dead[i].state for i in unknown] == [InstanceState.MISSING] * 2
    be.terminate(facts.instance_id)
    be.release(facts.instance_id)
    assert cloud.leftovers(task("lost")) == []


@EVERY_CLOUD
def test_a_rehearsed_preemption_ends_the_attempt_as_preempted(cloud):
    """The rehearsal marker in the store (what ``airflow-spot rehearse`` and the UI's button write): the agent on the
    VM gives the job the notice, ends it after the grace and powers the VM off. A preemption, without a cloud call."""
    be = cloud.backend()
    req = cloud.request("rehearsed", SLEEPER)
    facts = be.launch(req)
    store = cloud.store(req.checkpoint_uri)
    wait_for(lambda: Markers(store.read_markers(1)).has(Marker.STARTED), 60, what="the agent to start the job")
    store.write_marker(1, Marker.REHEARSAL, rehearsal_marker(1.0, "a test"))
    cloud.fake.wait_gone(facts.instance_id)
    markers = Markers(store.read_markers(1))
    assert markers.rehearsed and markers.exited
    verdict = classify(describe(be, facts.instance_id)[facts.instance_id], markers)
    assert verdict.status is AttemptStatus.PREEMPTED and verdict.reason.startswith("rehearsed preemption"), verdict
    be.terminate(facts.instance_id)
    be.release(facts.instance_id)
    assert cloud.leftovers(task("rehearsed")) == []


@CLOUDS
def test_vm_that_powers_off_before_its_agent_starts_is_a_failed_boot(cloud):
    """No Python on the image: the boot script cannot start the agent and powers off. Relaunching would fail the
    same way, so this is a failure (a retry), not a lost VM (a free relaunch)."""
    be = cloud.backend(python="/nonexistent/python3")
    facts = be.launch(cloud.request("badboot", PASS))
    cloud.fake.wait_gone(facts.instance_id)
    dead = describe(be, facts.instance_id)[facts.instance_id]
    verdict = classify(dead, Markers(cloud.store(cloud.uri("badboot/")).read_markers(1)))
    assert verdict.status.value == "failed" and re.search(cloud.failed_boot_reason, verdict.reason), verdict.reason
    be.terminate(facts.instance_id)
    be.release(facts.instance_id)
    assert cloud.leftovers(task("badboot")) == []


@CLOUDS
def test_boot_script_carries_no_secret_and_quotes_the_command(cloud):
    nasty = ["python", "-c", "print('x')", "; rm -rf / #", "$(id)", "`whoami`"]
    text = cloud.backend().boot_script(cloud.request("secret", nasty))
    assert cloud.secret not in text and cloud.credential_word not in text
    # The command reaches the VM inside a quoted heredoc of JSON: no shell expansion of its words.
    assert "<<'SPOT_JSON_EOF'" in text and '"; rm -rf / #"' in text


@CLOUDS
def test_on_kill_leaves_the_disk_to_the_cloud_and_returns_while_the_vm_is_deleted(cloud):
    """on_kill has 30 s and a cloud takes tens of seconds to minutes to delete a VM: the data disk is set to go
    with the VM and nothing waits. The fake holds the deletion until on_kill has returned."""
    be = cloud.backend()
    req = cloud.request("killed", SLEEPER)
    instance_id = be.launch(req).instance_id
    wait_for(lambda: cloud.vm_running(instance_id), 60, what="the attempt to run")
    disk = cloud.data_disk(instance_id)
    assert not cloud.disk_auto_deleted(instance_id)  # as launched: the disk outlives the VM
    cloud.fake.hold_termination(instance_id)
    killing = start_on_kill(TaskEnded(backend=be.serialize(), instance_id=instance_id, attempt=1,
                                      checkpoint_uri=req.checkpoint_uri, conn_id=cloud.conn_id))
    try:
        wait_for(killing.done, 60, what="on_kill to return while the cloud still deletes the VM")
        killing.result()
        assert cloud.status(instance_id) == cloud.terminating_status
        assert cloud.data_disk(instance_id) == disk and cloud.disk_auto_deleted(instance_id)  # attached, marked
    finally:
        cloud.fake.finish_termination(instance_id)
    wait_for(lambda: cloud.leftovers(task("killed")) == [], what="the cloud to delete the data disk with the VM")


@CLOUDS
def test_on_kill_of_a_backup_save_helper_keeps_the_disk_it_copies(cloud, tmp_path):
    """A helper killed mid-copy goes alone, without waiting: the disk holds checkpoints no store has yet."""
    be = cloud.backend(python=stalled_python(tmp_path))
    req = cloud.request("helperkill", PASS)
    instance_id = be.launch(req).instance_id
    wait_for(lambda: cloud.vm_running(instance_id), 60, what="the attempt to run")
    disk = cloud.data_disk(instance_id)
    unsaved = cloud.fake.data_dir(instance_id).resolve() / "checkpoints" / "ckpt-00000001"
    unsaved.parent.mkdir(parents=True, exist_ok=True)
    unsaved.write_bytes(b"written after the last sync")
    cloud.fake.preempt(instance_id, notice_seconds=None)
    cloud.fake.wait_gone(instance_id)
    saving = BackupSaveRequest(instance_id, 1, req.checkpoint_uri, STEP_PATTERN, token=req.token)
    helper = be.backup_save(saving).helper_id
    assert helper and cloud.data_disk(helper) == disk
    cloud.assert_helper(helper, instance_id)
    cloud.fake.hold_termination(helper)
    killing = start_on_kill(HelperTaskEnded(backend=be.serialize(), instance_id=helper, attempt=1,
                                            checkpoint_uri=req.checkpoint_uri, conn_id=cloud.conn_id))
    try:
        wait_for(killing.done, 60, what="on_kill to return while the cloud still deletes the helper")
        killing.result()
        assert cloud.status(helper) == cloud.terminating_status
        assert not cloud.disk_auto_deleted(helper)
    finally:
        cloud.fake.finish_termination(helper)
    assert helper not in cloud.vms(task("helperkill"))
    assert disk in cloud.disks(task("helperkill")) and not cloud.disk_in_use(disk)
    assert unsaved.read_bytes() == b"written after the last sync"
    be.release(instance_id, token=req.token)
    assert cloud.leftovers(task("helperkill")) == []


@CLOUDS
def test_cancel_of_a_vm_already_gone_deletes_its_disk(cloud):
    be = cloud.backend()
    instance_id = be.launch(cloud.request("alreadygone", SLEEPER)).instance_id
    wait_for(lambda: cloud.vm_running(instance_id), 60, what="the attempt to run")
    disk = cloud.data_disk(instance_id)
    cloud.vanish(instance_id)
    assert cloud.vms(task("alreadygone")) == [] and cloud.disks(task("alreadygone")) == [disk]  # it outlives its VM
    be.cancel(instance_id)
    assert cloud.leftovers(task("alreadygone")) == []


@EVERY_CLOUD
def test_every_scenario_cleaned_up_after_itself(cloud):
    """Runs last for each cloud: no VM or disk of any job is left."""
    assert cloud.leftovers({}) == []
