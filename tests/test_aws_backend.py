"""The AWS backend end to end against moto: real boto3/aiobotocore through the amazon provider's hooks,
real user data run as local "VMs" with a fake IMDS, real agent and training, S3 from moto."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from pathlib import Path

import pytest

from airflow_spot_provider.attempt import InstanceState, Markers, classify
from airflow_spot_provider.backends.base import BackupSaveRequest, JobIdentity, LaunchRequest
from airflow_spot_provider.checkpoints.store import CheckpointStore
from airflow_spot_provider.triggers.backup_save import SAVED

from .aws_cloud import FakeAws
from .chaos import Chaos
from .e2e import assert_bit_identical, baseline_model, run_job, train_command
from .test_on_kill import HelperTaskEnded, TaskEnded, stalled_python, start_on_kill
from .waiting import wait_for

CONN_ID = "spot_aws"
BUCKET = "ckpt"
SECRET = "conn-secret-7f3a9c1e-marker"
TYPES = ["m5.large", "c5.xlarge"]
ZONES = ["us-east-1a", "us-east-1b"]


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    with FakeAws(tmp_path_factory.mktemp("aws")) as fake:
        name, value = fake.airflow_conn(CONN_ID, password=SECRET)
        os.environ[name] = value
        fake.client("s3").create_bucket(Bucket=BUCKET)
        yield fake
        os.environ.pop(name, None)
    assert not fake.processes_alive()


@pytest.fixture
def ami(aws) -> str:
    return aws.client("ec2").describe_images()["Images"][0]["ImageId"]


def options(**extra):
    # The "image" is this Python environment: the agent is installed already (agent_install=[]).
    return {"region_name": "us-east-1", "python": sys.executable, "agent_install": [], "wait_timeout": 60, **extra}


def backend(**extra):
    from airflow_spot_provider.backends.aws import AwsBackend

    return AwsBackend(conn_id=CONN_ID, **options(**extra))


def request(ami: str, prefix: str, command: list[str], attempt: int = 1, **kw) -> LaunchRequest:
    return LaunchRequest(
        identity=JobIdentity("dag", "run", prefix, -1, "nonce"), attempt=attempt, command=command, resume_args=[],
        env={}, checkpoint_uri=f"s3://{BUCKET}/{prefix}/", checkpoint_pattern=r"(?P<step>\d+)",
        sync_interval=kw.pop("sync_interval", 0.5),
        instance_type=kw.pop("instance_type", "m5.large"), zone=kw.pop("zone", "us-east-1a"), image=ami, **kw,
    )


def ids(aws: FakeAws, task_id: str) -> list[str]:
    flt = [{"Name": "tag:spot-task-id", "Values": [task_id]}]
    return [i["InstanceId"] for r in aws.client("ec2").describe_instances(Filters=flt)["Reservations"]
            for i in r["Instances"]]


def leftovers(aws: FakeAws, task_id: str) -> list[str]:
    """Every instance that is not terminated, and every volume, carrying this job's tags."""
    ec2 = aws.client("ec2")
    flt = [{"Name": "tag:spot-task-id", "Values": [task_id]}]
    instances = [i["InstanceId"] for r in ec2.describe_instances(Filters=flt)["Reservations"] for i in r["Instances"]
                 if i["State"]["Name"] != "terminated"]
    volumes = [v["VolumeId"] for v in ec2.describe_volumes(Filters=flt)["Volumes"]]
    return instances + volumes


def chaos(aws: FakeAws, task_id: str, plan: dict[int, tuple[int, float | None]]) -> Chaos:
    """Reclaims the job's attempts on ``plan`` (see tests/chaos.py)."""
    flt = [{"Name": "tag:spot-task-id", "Values": [task_id]}, {"Name": "tag:spot-role", "Values": ["attempt"]},
           {"Name": "instance-state-name", "Values": ["running"]}]

    def running() -> list[tuple[str, int]]:
        reservations = aws.client("ec2").describe_instances(Filters=flt)["Reservations"]
        return [(i["InstanceId"], int({t["Key"]: t["Value"] for t in i["Tags"]}["spot-attempt"]))
                for r in reservations for i in r["Instances"]]

    return Chaos(running, lambda iid: aws.root / "vms" / iid / "root" / "data" / "checkpoints",
                 lambda iid, notice: aws.preempt(iid, notice_seconds=notice), plan)


def aws_job(tmp_path: Path, task_id: str, ami: str, **kw):
    return dict(backend="aws", conn_id=CONN_ID, checkpoint_uri=f"s3://{BUCKET}/{task_id}/",
                machine={"instance_types": TYPES[:1], "zones": ZONES, "image": ami}, backend_options=options(), **kw)


@pytest.mark.usefixtures("airflow_db")
def test_preempted_twice_backup_saved_resumed_bit_identical(aws, ami, tmp_path, dataset, capfd):
    command = train_command(dataset, epochs=8, epoch_seconds=0.5)
    # 1st, at step 200: a 2-minute-style notice (here 60 s): the job saves, the agent syncs and powers the VM off
    # long before the deadline, so the notice decides, however slow the machine. 2nd, at step 500:
    # no notice at all, and no periodic sync before it, so the newest checkpoints exist only on the dead VM's
    # EBS volume.
    market = chaos(aws, "train", {1: (200, 60.0), 2: (500, None)})
    market.start()
    try:
        result = run_job("aws_two_preemptions", tmp_path, command, max_preemptions=3, poll_interval=0.3,
                         **{**aws_job(tmp_path, "train", ami), "sync_interval": 600.0})
    finally:
        market.stop.set()
        market.join()
    assert result["state"] == "success" and result["try_number"] == 1
    attempts = result["summary"]["attempts"]
    assert [a["status"] for a in attempts] == ["preempted", "preempted", "succeeded"]
    # After the notice the job saved and the agent powered the VM off before EC2's deadline: the notice decides.
    assert attempts[0]["reason"].startswith("interruption notice")
    assert "Server.SpotInstanceTermination" in attempts[1]["reason"]  # no notice: EC2's state reason decides
    assert attempts[1]["backup_save"]["uploaded"]  # the helper instance recovered files from the EBS volume
    assert attempts[1]["backup_save"]["helper_id"] in set(ids(aws, "train")) - {a["instance_id"] for a in attempts}
    assert attempts[0]["notice_at"] is not None and attempts[1]["notice_at"] is None
    for before, after in zip(attempts, attempts[1:], strict=False):
        assert after["restored_from"] == before["last_checkpoint"] is not None
    assert all(a["price_per_hour"] and a["on_demand_price_per_hour"] == 0.096 for a in attempts)
    assert all(a["market"] == "spot" and a["instance_type"] == "m5.large" for a in attempts)
    store = CheckpointStore.from_uri(f"s3://{BUCKET}/train/", endpoint_url=aws.endpoint, key="x", secret="x")
    model = tmp_path / "model.npz"
    model.write_bytes(store.fs.cat_file(store.path("model.npz")))
    assert_bit_identical(model, baseline_model(tmp_path, command))
    assert leftovers(aws, "train") == []
    # The task's extra links: the last attempt's EC2 console page and the S3 prefix.
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    ti = result["run"].get_task_instance("train")
    with create_session() as session:
        links = {key: XComModel.deserialize_value(session.scalars(XComModel.get_many(
            run_id=ti.run_id, dag_ids=ti.dag_id, task_ids="train", key=key)).first())
            for key in ("spot_attempt_url", "spot_checkpoint_url")}
    assert links["spot_attempt_url"].endswith(f"instanceId={attempts[-1]['instance_id']}")
    assert links["spot_checkpoint_url"] == "https://s3.console.aws.amazon.com/s3/buckets/ckpt?prefix=train/"
    # The connection's secret is in no user data (attempts and helper), task log, XCom or ledger entry.
    ec2 = aws.client("ec2")
    flt = [{"Name": "tag:spot-task-id", "Values": ["train"]}]
    user_data = [base64.b64decode(ec2.describe_instance_attribute(InstanceId=i["InstanceId"], Attribute="userData")
                                  ["UserData"]["Value"]).decode()
                 for r in ec2.describe_instances(Filters=flt)["Reservations"] for i in r["Instances"]]
    assert len(user_data) == 4  # three attempts and one backup-save helper
    texts = [*user_data, json.dumps(result["summary"]), capfd.readouterr().out, *map(aws.console, ids(aws, "train"))]
    assert not [t[:60] for t in texts if SECRET in t]


def test_no_notice_no_final_sync_helper_backup_save_recovers(aws, ami, tmp_path):
    """A VM killed without warning before any sync: only the helper instance can save its files."""
    be = backend()
    script = ("import os, pathlib, time\n"
              "d = pathlib.Path(os.environ['SPOT_CHECKPOINT_DIR'])\n"
              "for step in (1, 2, 3):\n"
              "    (d / f'ckpt-{step:08d}').write_bytes(os.urandom(2048) + bytes([step]))\n"
              "time.sleep(600)\n")
    req = request(ami, "nonotice", [sys.executable, "-c", script], sync_interval=600)
    facts = be.launch(req)
    volume_dir = wait_for(lambda: [d for d in aws.root.joinpath("volumes").glob("*/checkpoints/ckpt-00000003")])[0]
    aws.preempt(facts.instance_id, notice_seconds=None)
    aws.wait_gone(facts.instance_id)
    store = CheckpointStore.from_uri(req.checkpoint_uri, endpoint_url=aws.endpoint, key="x", secret="x")
    assert store.read_manifest().files == {}  # nothing reached S3 from the VM itself
    dead = asyncio.run(be.describe([facts.instance_id]))[facts.instance_id]
    assert dead.state is InstanceState.TERMINATED and dead.preempted
    assert classify(dead, Markers(store.read_markers(1))).status.value == "preempted"

    be.terminate(facts.instance_id)
    started = be.backup_save(BackupSaveRequest(facts.instance_id, 1, req.checkpoint_uri, r"(?P<step>\d+)"))
    assert started.helper_id and started.helper_id != facts.instance_id
    marker = wait_for(lambda: store.read_markers(1).get("backup-save"), 60)
    result = be.finish_backup_save(facts.instance_id, started.helper_id, marker)
    assert result.error is None and result.latest == "ckpt-00000003"
    for name in ("ckpt-00000001", "ckpt-00000002", "ckpt-00000003"):
        assert store.fs.cat_file(store.path(name)) == (volume_dir.parent / name).read_bytes()
    be.release(facts.instance_id)
    assert leftovers(aws, "nonotice") == []


def test_capacity_error_moves_to_next_zone_and_throttling_is_retried(aws, ami):
    be = backend()
    aws.fail_launch("InsufficientInstanceCapacity", instance_type="m5.large", zone="us-east-1a")
    try:
        from airflow_spot_provider.backends.base import LaunchError

        with pytest.raises(LaunchError) as err:
            be.launch(request(ami, "capacity", [sys.executable, "-c", "pass"]))
        assert err.value.code == "InsufficientInstanceCapacity" and err.value.move_on
        # The operator's next call goes to the next placement, with its own launch token.
        facts = be.launch(request(ami, "capacity", [sys.executable, "-c", "pass"], zone="us-east-1b", launch_try=1))
        assert facts.zone == "us-east-1b"
    finally:
        aws.clear_failures()
    aws.throttle(times=1)
    before = aws.calls["RunInstances"]
    facts = be.launch(request(ami, "throttled", [sys.executable, "-c", "pass"]))
    assert facts.state in (InstanceState.PENDING, InstanceState.RUNNING)
    assert aws.calls["RunInstances"] - before == 2  # refused once, retried by the client
    for prefix in ("capacity", "throttled"):
        for inst in be._by_tags(**{"spot-task-id": prefix}):
            be.terminate(inst["InstanceId"])
            be.release(inst["InstanceId"])


@pytest.mark.usefixtures("airflow_db")
def test_job_waits_for_capacity_on_a_timer_then_lands(aws, ami, tmp_path, dataset):
    # Every placement is refused once: one full round, then a timer deferral (no worker slot), then it lands.
    aws.fail_launch("InsufficientInstanceCapacity", times=2)
    try:
        result = run_job("aws_capacity_wait", tmp_path, train_command(dataset, epochs=2), poll_interval=0.3,
                         capacity_retry_delay=0.5, **aws_job(tmp_path, "capacity_job", ami))
    finally:
        aws.clear_failures()
    assert result["state"] == "success"
    (attempt,) = result["summary"]["attempts"]
    assert [e["zone"] for e in attempt["launch_errors"]] == ZONES
    assert attempt["capacity_waits"] == 1 and attempt["status"] == "succeeded"
    assert leftovers(aws, "capacity_job") == []


def test_repeated_launch_with_the_same_identity_creates_one_instance(aws, ami):
    be = backend()
    req = request(ami, "idem", [sys.executable, "-c", "import time; time.sleep(30)"])
    first = be.launch(req)
    again = be.launch(req)
    retried = be.launch(LaunchRequest(**{**req.__dict__, "launch_try": 3}))
    assert first.instance_id == again.instance_id == retried.instance_id
    assert be.find(req).instance_id == first.instance_id
    assert len(be._by_tags(**{"spot-task-id": "idem"})) == 1
    be.terminate(first.instance_id)
    be.release(first.instance_id)
    assert leftovers(aws, "idem") == []


def test_lost_instance_is_lost_not_preempted(aws, ami):
    be = backend()
    facts = be.launch(request(ami, "lost", [sys.executable, "-c", "import time; time.sleep(30)"]))
    aws.lose(facts.instance_id)
    aws.wait_gone(facts.instance_id)
    dead = asyncio.run(be.describe([facts.instance_id, "i-0123456789abcdef0"]))
    assert dead[facts.instance_id].state is InstanceState.TERMINATED and not dead[facts.instance_id].preempted
    assert classify(dead[facts.instance_id], Markers()).status.value == "lost"
    assert dead["i-0123456789abcdef0"].state is InstanceState.MISSING
    be.terminate(facts.instance_id)
    be.release(facts.instance_id)


def test_instance_that_powers_off_before_its_agent_starts_is_a_failed_boot(aws, ami):
    be = backend(python="/nonexistent/python3")  # an image without the Python the boot script names
    facts = be.launch(request(ami, "badboot", [sys.executable, "-c", "pass"]))
    aws.wait_gone(facts.instance_id)
    dead = asyncio.run(be.describe([facts.instance_id]))[facts.instance_id]
    store = CheckpointStore.from_uri(f"s3://{BUCKET}/badboot/", endpoint_url=aws.endpoint, key="x", secret="x")
    verdict = classify(dead, Markers(store.read_markers(1)))
    assert verdict.status.value == "failed" and "Client.InstanceInitiatedShutdown" in verdict.reason
    be.terminate(facts.instance_id)
    be.release(facts.instance_id)
    assert leftovers(aws, "badboot") == []


def test_user_data_carries_no_secret_and_quotes_the_command(aws, ami):
    be = backend()
    nasty = ["python", "-c", "print('x')", "; rm -rf / #", "$(id)", "`whoami`"]
    text = be.boot_script(request(ami, "secret", nasty))
    assert SECRET not in text and "instance-role" not in text
    # The command reaches the VM inside a quoted heredoc of JSON: no shell expansion of its words.
    assert "<<'SPOT_JSON_EOF'" in text and '"; rm -rf / #"' in text


def test_two_hundred_watched_instances_one_describe_per_interval(aws, ami):
    from airflow_spot_provider.triggers.poller import SharedPoller

    ec2 = aws.client("ec2")
    ids = [i["InstanceId"] for i in ec2.run_instances(ImageId=ami, InstanceType="t3.micro", MinCount=200,
                                                      MaxCount=200)["Instances"]]
    interval = 0.25

    async def watch_all() -> tuple[int, dict[str, int]]:
        seen = dict.fromkeys(ids, 0)

        async def one(instance_id: str) -> None:
            poller = SharedPoller.for_backend(backend(), interval)
            async with poller.watch(instance_id) as updates:
                async for facts in updates:
                    assert facts.state is InstanceState.RUNNING
                    seen[instance_id] += 1

        aws.reset_calls()
        tasks = [asyncio.create_task(one(i)) for i in ids]
        while min(seen.values()) < 4:  # every watcher got four fresh updates
            await asyncio.sleep(0.05)
        calls = aws.calls["DescribeInstances"]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return calls, seen

    calls, seen = asyncio.run(asyncio.wait_for(watch_all(), 120))
    # One call per poll round for all 200 (a round in flight may have started): not 200 per round.
    assert max(seen.values()) <= calls <= max(seen.values()) + 1
    ec2.terminate_instances(InstanceIds=ids)


@pytest.mark.usefixtures("airflow_db")
def test_no_spot_capacity_before_the_deadline_goes_on_demand(aws, ami, tmp_path, dataset):
    aws.fail_launch("InsufficientInstanceCapacity", spot_only=True)  # spot is sold out everywhere, on-demand is not
    try:
        job = aws_job(tmp_path, "late_job", ami)
        job["machine"] = {**job["machine"], "on_demand_if_late": True}
        result = run_job("aws_on_demand_if_late", tmp_path, train_command(dataset, epochs=2), poll_interval=0.3,
                         job_timeout=120, capacity_retry_delay=300, **job)
    finally:
        aws.clear_failures()
    assert result["state"] == "success"
    (attempt,) = result["summary"]["attempts"]
    assert attempt["market"] == "on-demand" and attempt["capacity_waits"] == 0
    assert [e["market"] for e in attempt["launch_errors"]] == ["spot", "spot"]
    assert attempt["price_per_hour"] == attempt["on_demand_price_per_hour"] == 0.096
    assert leftovers(aws, "late_job") == []


def test_revoked_describe_fails_the_try_and_the_retries_pick_up_the_attempt_and_the_helper(aws, ami, tmp_path):
    """ec2:DescribeInstances refused (UnauthorizedOperation) past describe_failure_timeout: the try fails with
    EC2's error, the attempt (later, its backup-save helper) stays on record untouched, the next try resumes it."""
    from airflow.sdk.exceptions import AirflowException, TaskDeferred

    from airflow_spot_provider.operators.spot_training import SpotTrainingOperator

    from .fake_context import context

    ledger = tmp_path / "ledger.json"
    op = SpotTrainingOperator(task_id="revoked", command=[sys.executable, "-c", "import time; time.sleep(600)"],
                              poll_interval=0.2, describe_failure_timeout=1.0, **aws_job(tmp_path, "revoked", ami))

    def ctx(try_number: int) -> dict:
        return context(ledger, try_number, task_id="revoked")

    def next_event(trigger) -> dict:
        return asyncio.run(asyncio.wait_for(anext(trigger.run()), 120)).payload

    def refused_event(trigger) -> dict:
        aws.refuse("DescribeInstances")
        try:
            return next_event(trigger)
        finally:
            aws.clear_failures()

    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx(1))
    attempt = deferred.value.trigger
    assert attempt.serialize()[1]["describe_failure_timeout"] == 1.0
    event = refused_event(attempt)
    assert event["status"] == "error" and "UnauthorizedOperation" in event["reason"]
    before = ledger.read_text()
    with pytest.raises(AirflowException, match="UnauthorizedOperation"):
        op.execute_complete(ctx(1), event)
    assert ledger.read_text() == before  # still running, same instance, nothing released
    assert aws.instance_state(attempt.watch.instance_id) == "running"
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx(2))  # reconnects to the same VM
    assert deferred.value.trigger.watch.instance_id == attempt.watch.instance_id

    aws.preempt(attempt.watch.instance_id, notice_seconds=None)
    aws.wait_gone(attempt.watch.instance_id)
    event = next_event(deferred.value.trigger)
    assert event["status"] == "preempted"
    with pytest.raises(TaskDeferred) as deferred:
        op.execute_complete(ctx(2), event)  # the disk is saved by a helper VM
    helper = deferred.value.trigger
    assert deferred.value.method_name == "backup_save_complete"
    assert helper.watch.instance_id != attempt.watch.instance_id
    event = refused_event(helper)
    assert event["status"] == "error" and "UnauthorizedOperation" in event["reason"]
    before = ledger.read_text()
    with pytest.raises(AirflowException, match="UnauthorizedOperation"):
        op.backup_save_complete(ctx(2), event)
    assert ledger.read_text() == before  # the helper is still the attempt's, no backup-save error counted
    assert json.loads(before)["spot.attempt.0001"]["backup_helper"] == helper.watch.instance_id
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx(3))  # waits for the same helper again
    assert deferred.value.method_name == "backup_save_complete"
    assert deferred.value.trigger.watch.instance_id == helper.watch.instance_id

    event = next_event(deferred.value.trigger)
    assert event["status"] == SAVED
    with pytest.raises(TaskDeferred) as deferred:
        op.backup_save_complete(ctx(3), event)  # saved and released: attempt 2 is launched
    first = json.loads(ledger.read_text())["spot.attempt.0001"]
    assert first["released"] and not first["backup_save"]["error"] and first["backup_save_errors"] == []
    backend().terminate(deferred.value.trigger.watch.instance_id)
    backend().release(deferred.value.trigger.watch.instance_id)
    assert leftovers(aws, "revoked") == []


def data_mapping(aws: FakeAws, instance_id: str) -> dict:
    """The instance's block device mapping at the data device."""
    from airflow_spot_provider.backends.aws import DATA_DEVICE

    reservations = aws.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"]
    return next(m for r in reservations for i in r["Instances"] for m in i["BlockDeviceMappings"]
                if m["DeviceName"] == DATA_DEVICE)


def test_on_kill_leaves_the_volume_to_ec2_and_returns_while_the_instance_shuts_down(aws, ami):
    """on_kill has 30 s and EC2 may take minutes to terminate: the data volume is marked DeleteOnTermination
    and nothing waits. The fake holds the termination until on_kill has returned, then lets it finish."""
    be = backend()
    req = request(ami, "killed", [sys.executable, "-c", "import time; time.sleep(600)"])
    instance_id = be.launch(req).instance_id
    wait_for(lambda: aws.instance_state(instance_id) == "running", what="the attempt to run")
    volume = data_mapping(aws, instance_id)["Ebs"]["VolumeId"]
    aws.hold_termination(instance_id)
    killing = start_on_kill(TaskEnded(backend=be.serialize(), instance_id=instance_id, attempt=1,
                                      checkpoint_uri=req.checkpoint_uri, conn_id=CONN_ID))
    try:
        wait_for(killing.done, 60, what="on_kill to return while EC2 still terminates the instance")
        killing.result()
        assert aws.instance_state(instance_id) == "shutting-down"
        ebs = data_mapping(aws, instance_id)["Ebs"]
        assert ebs["VolumeId"] == volume and ebs["DeleteOnTermination"] is True  # still attached, marked
    finally:
        aws.finish_termination(instance_id)
    wait_for(lambda: leftovers(aws, "killed") == [], what="EC2 to delete the volume with the instance")


def test_on_kill_of_a_backup_save_helper_keeps_the_volume_it_copies(aws, ami, tmp_path):
    """A helper killed mid-copy goes alone, without waiting: the volume holds checkpoints no store has yet."""
    be = backend(python=stalled_python(tmp_path))
    req = request(ami, "helperkill", [sys.executable, "-c", "pass"])
    instance_id = be.launch(req).instance_id
    wait_for(lambda: aws.instance_state(instance_id) == "running", what="the attempt to run")
    volume = data_mapping(aws, instance_id)["Ebs"]["VolumeId"]
    unsaved = aws.volume_dir(volume) / "checkpoints" / "ckpt-00000001"
    unsaved.parent.mkdir(parents=True, exist_ok=True)
    unsaved.write_bytes(b"written after the last sync")
    aws.preempt(instance_id, notice_seconds=None)
    aws.wait_gone(instance_id)
    saving = BackupSaveRequest(instance_id, 1, req.checkpoint_uri, r"(?P<step>\d+)", token=req.token)
    helper = be.backup_save(saving).helper_id
    assert helper and data_mapping(aws, helper)["Ebs"]["VolumeId"] == volume
    aws.hold_termination(helper)
    killing = start_on_kill(HelperTaskEnded(backend=be.serialize(), instance_id=helper, attempt=1,
                                            checkpoint_uri=req.checkpoint_uri, conn_id=CONN_ID))
    try:
        wait_for(killing.done, 60, what="on_kill to return while EC2 still terminates the helper")
        killing.result()
        assert aws.instance_state(helper) == "shutting-down"
        assert data_mapping(aws, helper)["Ebs"]["DeleteOnTermination"] is False
    finally:
        aws.finish_termination(helper)
    assert aws.client("ec2").describe_volumes(VolumeIds=[volume])["Volumes"][0]["State"] == "available"
    assert unsaved.read_bytes() == b"written after the last sync"
    be.release(instance_id, token=req.token)
    assert leftovers(aws, "helperkill") == []


def test_cancel_of_an_instance_already_gone_deletes_its_volume_at_once(aws, ami):
    be = backend()
    instance_id = be.launch(request(ami, "alreadygone", [sys.executable, "-c", "import time; time.sleep(600)"])) \
        .instance_id
    wait_for(lambda: aws.instance_state(instance_id) == "running", what="the attempt to run")
    aws.lose(instance_id)
    aws.wait_gone(instance_id)
    assert len(leftovers(aws, "alreadygone")) == 1  # the data volume outlives its instance
    be.cancel(instance_id)
    assert leftovers(aws, "alreadygone") == []
