"""Tests of the offline AWS (tests/aws_cloud.py): what EC2 does that moto alone does not.

Each test gets its own FakeAws (moto state is per process and reset on start); every test ends by
closing it and checking that no VM process outlived it.
"""

from __future__ import annotations

import json
import shlex
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from .aws_cloud import FakeAws
from .waiting import wait_for

AMI = "ami-12345678"
DATA_BDM = [{"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 1, "DeleteOnTermination": False}}]
SPOT = {"MarketType": "spot",
        "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}

# Polls IMDSv2 with the standard library (no curl on the VM) and records the notice on the data volume.
NOTICE_WATCHER = """#!/bin/bash
set -eu
echo started > "$SPOT_ROOT/data/started"
exec python - <<'PY'
import os, time, urllib.error, urllib.request
base = os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"].rstrip("/")
put = urllib.request.Request(base + "/latest/api/token", method="PUT",
                             headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
token = urllib.request.urlopen(put, timeout=5).read().decode()
while True:
    get = urllib.request.Request(base + "/latest/meta-data/spot/instance-action",
                                 headers={"X-aws-ec2-metadata-token": token})
    try:
        body = urllib.request.urlopen(get, timeout=5).read()
    except urllib.error.HTTPError as exc:
        assert exc.code == 404, exc.code
        time.sleep(0.05)
        continue
    path = os.environ["SPOT_ROOT"] + "/data/notice.json"
    with open(path + ".tmp", "wb") as out:
        out.write(body)
    os.replace(path + ".tmp", path)
    print("notice seen", flush=True)
    time.sleep(600)  # a job that does not stop by itself: the kill must end it
PY
"""

SLEEPER = "#!/bin/bash\necho booted\nsleep 600\n"


@pytest.fixture
def fake(tmp_path: Path):
    cloud = FakeAws(tmp_path / "aws")
    try:
        yield cloud
        assert cloud.runner_errors == []
    finally:
        cloud.close()
    assert cloud.processes_alive() == []


def launch(fake: FakeAws, user_data: str | None = None, token: str | None = None, **kwargs) -> dict:
    params = {"ImageId": AMI, "MinCount": 1, "MaxCount": 1, "InstanceType": "t3.micro", **kwargs}
    if user_data is not None:
        params["UserData"] = user_data
    if token:
        params["ClientToken"] = token
    return fake.client("ec2").run_instances(**params)["Instances"][0]


def describe(fake: FakeAws, instance_id: str) -> dict:
    return fake.client("ec2").describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def data_volume(instance: dict) -> str:
    return next(m["Ebs"]["VolumeId"] for m in instance["BlockDeviceMappings"] if m["DeviceName"] == "/dev/sdf")


def error_of(call) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as info:
        call()
    err = info.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"], err["Error"]["Message"]


# ---- API behaviour ---------------------------------------------------------------------------------


def test_client_token_makes_run_instances_idempotent(fake: FakeAws):
    first = launch(fake, token="attempt-1")
    again = launch(fake, token="attempt-1")
    assert again["InstanceId"] == first["InstanceId"]
    reservations = fake.client("ec2").describe_instances()["Reservations"]
    assert [i["InstanceId"] for r in reservations for i in r["Instances"]] == [first["InstanceId"]]
    assert fake.calls["RunInstances"] == 2

    code, status, _ = error_of(lambda: launch(fake, token="attempt-1", InstanceType="t3.small"))
    assert (code, status) == ("IdempotentParameterMismatch", 400)
    assert launch(fake, token="attempt-2")["InstanceId"] != first["InstanceId"]


def test_capacity_error_only_for_the_chosen_type_and_zone(fake: FakeAws):
    subnets = fake.default_network()
    assert {"us-east-1a", "us-east-1b"} <= set(subnets)
    fake.fail_launch("InsufficientInstanceCapacity", instance_type="g5.xlarge", zone="us-east-1a")
    ec2 = fake.client("ec2", max_attempts=1)
    run = {"ImageId": AMI, "MinCount": 1, "MaxCount": 1}

    for where in ({"SubnetId": subnets["us-east-1a"]}, {"Placement": {"AvailabilityZone": "us-east-1a"}},
                  {"NetworkInterfaces": [{"DeviceIndex": 0, "SubnetId": subnets["us-east-1a"]}]}):
        code, status, message = error_of(lambda w=where: ec2.run_instances(InstanceType="g5.xlarge", **run, **w))
        assert (code, status) == ("InsufficientInstanceCapacity", 500)
        assert "us-east-1a" in message
    other_zone = ec2.run_instances(InstanceType="g5.xlarge", SubnetId=subnets["us-east-1b"], **run)["Instances"][0]
    assert other_zone["Placement"]["AvailabilityZone"] == "us-east-1b"
    ec2.run_instances(InstanceType="g6.xlarge", SubnetId=subnets["us-east-1a"], **run)
    assert len(ec2.describe_instances()["Reservations"]) == 2  # failed launches created nothing

    fake.clear_failures()
    ec2.run_instances(InstanceType="g5.xlarge", SubnetId=subnets["us-east-1a"], **run)


@pytest.mark.parametrize(("code", "status"), [
    ("InsufficientInstanceCapacity", 500), ("SpotMaxPriceTooLow", 400),
    ("MaxSpotInstanceCountExceeded", 400), ("RequestLimitExceeded", 503),
])
def test_injected_launch_errors_use_ec2_status_and_xml(fake: FakeAws, code: str, status: int):
    fake.fail_launch(code, times=1)
    ec2 = fake.client("ec2", max_attempts=1)
    got = error_of(lambda: ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, InstanceMarketOptions=SPOT))
    assert got[:2] == (code, status)
    assert ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)["Instances"]  # times=1: used up


def test_throttle_then_success_and_what_botocore_retries_hide(fake: FakeAws):
    fake.throttle(times=1)
    code, status, _ = error_of(lambda: launch_with(fake.client("ec2", max_attempts=1)))
    assert (code, status) == ("RequestLimitExceeded", 503)
    assert launch_with(fake.client("ec2", max_attempts=1))

    # A default client retries 5xx and throttling by itself: one throttle is invisible, but still a request.
    fake.reset_calls()
    fake.throttle(times=1, action="DescribeInstances")
    ec2 = fake.client("ec2")
    ec2.describe_instances()
    assert fake.calls["DescribeInstances"] == 2
    # A capacity refusal counts launch calls (ClientToken): the SDK's retries of that call are refused too,
    # so the caller sees it, as from EC2 while the capacity is really missing.
    fake.fail_launch("InsufficientInstanceCapacity", times=1)
    assert error_of(lambda: launch_with(ec2))[0] == "InsufficientInstanceCapacity"
    assert fake.calls["RunInstances"] > 1
    assert launch_with(ec2)  # the next launch call (a new token) gets capacity


def test_botocore_max_attempts_1_still_retries_once(fake: FakeAws):
    # botocore reads retries={"max_attempts": N} as N retries: one injected failure is invisible.
    ec2 = fake.client("ec2", config=Config(retries={"max_attempts": 1}))
    fake.throttle(times=1)
    assert launch_with(ec2)
    assert fake.calls["RunInstances"] == 2
    fake.throttle(times=2)
    assert error_of(lambda: launch_with(ec2))[:2] == ("RequestLimitExceeded", 503)


def test_refused_action_fails_with_ec2_error_until_cleared(fake: FakeAws):
    # A revoked ec2:DescribeInstances permission: every call of that action (retries too), no other action.
    ec2 = fake.client("ec2")
    fake.refuse("DescribeInstances")
    assert error_of(ec2.describe_instances) == (
        "UnauthorizedOperation", 403, "You are not authorized to perform this operation.")
    assert fake.calls["DescribeInstances"] == 1  # botocore does not retry an authorization error
    assert launch_with(ec2)
    fake.clear_failures()
    assert len(ec2.describe_instances()["Reservations"]) == 1


def launch_with(ec2) -> str:
    return ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]


def test_spot_launch_gets_a_spot_request_and_price_history_is_moto_placeholder(fake: FakeAws):
    ec2 = fake.client("ec2")
    instance = ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, InstanceMarketOptions=SPOT, TagSpecifications=[
        {"ResourceType": "spot-instances-request", "Tags": [{"Key": "job", "Value": "j1"}]}])["Instances"][0]
    assert instance["InstanceLifecycle"] == "spot"
    request_id = instance["SpotInstanceRequestId"]
    assert describe(fake, instance["InstanceId"])["SpotInstanceRequestId"] == request_id
    (request,) = ec2.describe_spot_instance_requests()["SpotInstanceRequests"]
    assert (request["SpotInstanceRequestId"], request["InstanceId"]) == (request_id, instance["InstanceId"])
    assert (request["State"], request["Status"]["Code"]) == ("active", "fulfilled")
    assert request["Tags"] == [{"Key": "job", "Value": "j1"}]
    assert "SpotInstanceRequestId" not in launch(fake)  # on-demand: none

    # moto's price history: one constant row per zone offering the type, not a market.
    history = ec2.describe_spot_price_history(InstanceTypes=["g5.xlarge"], Filters=[
        {"Name": "availability-zone", "Values": ["us-east-1a"]}])["SpotPriceHistory"]
    assert [(h["AvailabilityZone"], h["SpotPrice"]) for h in history] == [("us-east-1a", "0.00001")]

    ec2.terminate_instances(InstanceIds=[instance["InstanceId"]])
    wait_for(lambda: ec2.describe_spot_instance_requests()["SpotInstanceRequests"][0]["State"] == "closed", 60)
    closed = ec2.describe_spot_instance_requests()["SpotInstanceRequests"][0]
    assert closed["Status"]["Code"] == "instance-terminated-by-user"


# ---- control layer -----------------------------------------------------------------------------------


def test_preempt_with_notice(fake: FakeAws):
    subnet = fake.default_network()["us-east-1b"]
    instance = launch(fake, NOTICE_WATCHER, InstanceMarketOptions=SPOT, SubnetId=subnet, BlockDeviceMappings=DATA_BDM)
    instance_id, volume = instance["InstanceId"], data_volume(instance)
    volume_dir = fake.volume_dir(volume)
    wait_for(lambda: (volume_dir / "started").exists(), 60, what="user data to start")

    fake.preempt(instance_id, notice_seconds=1.5)
    marked = fake.client("ec2").describe_spot_instance_requests()["SpotInstanceRequests"][0]
    assert marked["Status"]["Code"] == "marked-for-termination"
    wait_for(lambda: (volume_dir / "notice.json").exists(), 60, what="the VM to see the notice")
    assert fake.instance_state(instance_id) == "running"  # the notice comes before the kill
    notice = json.loads((volume_dir / "notice.json").read_text())
    assert notice["action"] == "terminate"
    kill_at = datetime.strptime(notice["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert 0 <= (kill_at - datetime.now(timezone.utc)).total_seconds() <= 2.5

    assert fake.wait_gone(instance_id, timeout=60) == "terminated"
    assert fake.processes_alive() == []
    gone = describe(fake, instance_id)
    assert gone["State"] == {"Code": 48, "Name": "terminated"}
    assert gone["StateReason"] == {"Code": "Server.SpotInstanceTermination",
                                   "Message": "Server.SpotInstanceTermination: Spot instance termination"}
    request = fake.client("ec2").describe_spot_instance_requests()["SpotInstanceRequests"][0]
    assert (request["State"], request["Status"]["Code"]) == ("closed", "instance-terminated-by-price")
    (vol,) = fake.client("ec2").describe_volumes(VolumeIds=[volume])["Volumes"]
    assert (vol["State"], vol["Attachments"]) == ("available", [])
    assert (volume_dir / "notice.json").exists()  # the disk outlives the VM
    assert "notice seen" in fake.console(instance_id)


def test_preempt_without_notice_and_lose(fake: FakeAws):
    spot = launch(fake, SLEEPER, InstanceMarketOptions=SPOT)["InstanceId"]
    lost = launch(fake, SLEEPER, InstanceMarketOptions=SPOT)["InstanceId"]
    wait_for(lambda: "booted" in fake.console(spot) and "booted" in fake.console(lost), 60)

    fake.preempt(spot, notice_seconds=None)
    assert describe(fake, spot)["StateReason"]["Code"] == "Server.SpotInstanceTermination"  # at once
    fake.lose(lost)
    gone = describe(fake, lost)
    assert gone["State"]["Name"] == "terminated"
    assert gone["StateReason"] == {"Code": "Server.InternalError",
                                   "Message": "Server.InternalError: Internal error on launch"}
    statuses = {r["InstanceId"]: r["Status"]["Code"]
                for r in fake.client("ec2").describe_spot_instance_requests()["SpotInstanceRequests"]}
    assert statuses == {spot: "instance-terminated-by-price", lost: "system-error"}
    assert fake.processes_alive() == []
    with pytest.raises(ValueError, match="not running"):
        fake.lose(lost)


def test_imds_requires_v2_tokens_and_shows_rebalance(fake: FakeAws):
    instance = launch(fake, SLEEPER, InstanceMarketOptions=SPOT, Placement={"AvailabilityZone": "us-east-1c"})
    instance_id = instance["InstanceId"]
    base = wait_for(lambda: fake.imds_endpoint(instance_id), 60).rstrip("/")

    def get(path: str, token: str | None) -> tuple[int, str]:
        headers = {"X-aws-ec2-metadata-token": token} if token else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers), timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""

    def put_token(ttl: str | None) -> tuple[int, str]:
        headers = {"X-aws-ec2-metadata-token-ttl-seconds": ttl} if ttl else {}
        request = urllib.request.Request(base + "/latest/api/token", method="PUT", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""

    assert put_token(None)[0] == 400
    assert get("/latest/meta-data/instance-id", None)[0] == 401
    assert get("/latest/meta-data/instance-id", "forged")[0] == 401
    status, token = put_token("60")
    assert status == 200
    assert get("/latest/meta-data/instance-id", token) == (200, instance_id)
    assert get("/latest/meta-data/placement/availability-zone", token) == (200, "us-east-1c")
    assert get("/latest/meta-data/instance-type", token) == (200, "t3.micro")
    assert get("/latest/meta-data/instance-life-cycle", token) == (200, "spot")
    assert get("/latest/meta-data/spot/instance-action", token)[0] == 404
    assert get("/latest/meta-data/events/recommendations/rebalance", token)[0] == 404
    fake.rebalance(instance_id)
    status, body = get("/latest/meta-data/events/recommendations/rebalance", token)
    assert status == 200 and "noticeTime" in json.loads(body)
    assert fake.instance_state(instance_id) == "running"  # a recommendation is not an interruption


# ---- VM runner ------------------------------------------------------------------------------------------


WRITER = """#!/bin/bash
echo "shutdown is $(command -v shutdown)"
env | sort > "$SPOT_ROOT/env.txt"
echo hello > "$SPOT_ROOT/data/x"
shutdown -h now
sleep 600
"""

# The backup-save pattern: wait for the dead VM's volume to be attached, copy it, wait for detach, power off.
READER = """#!/bin/bash
echo waiting
while [ ! -e "$SPOT_ROOT/data/x" ]; do sleep 0.05; done
cp "$SPOT_ROOT/data/x" "$SPOT_ROOT/copied"
while [ -e "$SPOT_ROOT/data" ]; do sleep 0.05; done
echo detached
poweroff
"""


def test_runner_shutdown_terminates_and_volume_moves_to_another_instance(fake: FakeAws):
    ec2 = fake.client("ec2")
    subnet = fake.default_network()["us-east-1a"]
    writer = launch(fake, WRITER, InstanceMarketOptions=SPOT, SubnetId=subnet, BlockDeviceMappings=DATA_BDM,
                    InstanceInitiatedShutdownBehavior="terminate")
    writer_id, volume = writer["InstanceId"], data_volume(writer)

    assert fake.wait_gone(writer_id, timeout=60) == "terminated"
    reason = describe(fake, writer_id)["StateReason"]
    assert reason == {"Code": "Client.InstanceInitiatedShutdown",
                      "Message": "Client.InstanceInitiatedShutdown: Instance initiated shutdown"}
    assert (fake.volume_dir(volume) / "x").read_text() == "hello\n"
    assert f"shutdown is {fake.vm_dir(writer_id) / 'bin' / 'shutdown'}" in fake.console(writer_id)
    env = dict(line.split("=", 1) for line in (fake.vm_dir(writer_id) / "root" / "env.txt").read_text().splitlines()
               if "=" in line)
    assert env["SPOT_ROOT"] == env["HOME"] == str(fake.vm_dir(writer_id) / "root")
    assert env["AWS_ENDPOINT_URL"] == fake.endpoint and env["AWS_ACCESS_KEY_ID"] == "instance-role"
    assert "AIRFLOW_HOME" not in env  # a clean environment, not the test process's
    assert ec2.describe_volumes(VolumeIds=[volume])["Volumes"][0]["State"] == "available"

    # Stop behaviour (EC2's default) and a volume attached while the user data is already running.
    reader_id = launch(fake, READER, SubnetId=subnet)["InstanceId"]
    wait_for(lambda: "waiting" in fake.console(reader_id), 60, what="reader to start")
    ec2.attach_volume(VolumeId=volume, InstanceId=reader_id, Device="/dev/sdf")
    copied = fake.vm_dir(reader_id) / "root" / "copied"
    wait_for(copied.exists, 60, what="the attached volume to appear as root/data")
    ec2.detach_volume(VolumeId=volume, InstanceId=reader_id, Device="/dev/sdf")
    assert fake.wait_gone(reader_id, timeout=60) == "stopped"
    assert copied.read_text() == "hello\n"
    assert "detached" in fake.console(reader_id)
    assert describe(fake, reader_id)["StateReason"]["Code"] == "Client.InstanceInitiatedShutdown"


def test_vm_reaches_s3_with_its_instance_environment(fake: FakeAws):
    fake.client("s3").create_bucket(Bucket="ckpt")
    script = ("#!/bin/bash\nset -e\npython -c \"import boto3; "
              "boto3.client('s3').put_object(Bucket='ckpt', Key='from-vm', Body=b'hi')\"\nshutdown -h now\n")
    instance_id = launch(fake, script, InstanceInitiatedShutdownBehavior="terminate")["InstanceId"]
    assert fake.wait_gone(instance_id, timeout=60) == "terminated", fake.console(instance_id)
    assert fake.client("s3").get_object(Bucket="ckpt", Key="from-vm")["Body"].read() == b"hi"


def test_api_terminate_kills_at_once_and_finished_user_data_keeps_instance_running(fake: FakeAws):
    sleeper = launch(fake, SLEEPER)["InstanceId"]
    done = launch(fake, "#!/bin/bash\necho done\n")["InstanceId"]
    wait_for(lambda: "booted" in fake.console(sleeper) and "done" in fake.console(done), 60)
    victims = fake.processes_alive()
    assert victims

    fake.client("ec2").terminate_instances(InstanceIds=[sleeper])
    wait_for(lambda: not fake.processes_alive(), 60, interval=0.01, what="VM processes to die")
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in victims)
    time.sleep(0.3)
    assert fake.instance_state(done) == "running"  # like EC2: user data ending is not a shutdown


def test_held_termination_and_a_data_volume_marked_delete_on_termination(fake: FakeAws):
    ec2 = fake.client("ec2")
    instance_id = launch(fake, SLEEPER, BlockDeviceMappings=DATA_BDM)["InstanceId"]
    volume = data_volume(describe(fake, instance_id))
    wait_for(lambda: "booted" in fake.console(instance_id), 60)

    def mark(device: str = "/dev/sdf"):
        return ec2.modify_instance_attribute(InstanceId=instance_id, BlockDeviceMappings=[
            {"DeviceName": device, "Ebs": {"DeleteOnTermination": True}}])

    # EC2 refuses a device the instance does not have (moto would answer with a server error).
    assert error_of(lambda: mark("/dev/sdz"))[:2] == ("InvalidInstanceAttributeValue", 400)
    mark()
    [mapping] = [m for m in describe(fake, instance_id)["BlockDeviceMappings"] if m["DeviceName"] == "/dev/sdf"]
    assert mapping["Ebs"]["DeleteOnTermination"] is True

    fake.hold_termination(instance_id)
    [change] = ec2.terminate_instances(InstanceIds=[instance_id])["TerminatingInstances"]
    assert (change["PreviousState"]["Name"], change["CurrentState"]["Name"]) == ("running", "shutting-down")
    wait_for(lambda: not fake.processes_alive(), 60, what="the VM to be killed")
    assert describe(fake, instance_id)["State"] == {"Code": 32, "Name": "shutting-down"}
    # Still attached while EC2 tears the instance down: not deletable, no longer modifiable.
    assert ec2.describe_volumes(VolumeIds=[volume])["Volumes"][0]["State"] == "in-use"
    assert error_of(lambda: ec2.delete_volume(VolumeId=volume))[0] == "VolumeInUse"
    assert error_of(mark)[:2] == ("IncorrectInstanceState", 400)
    [again] = ec2.terminate_instances(InstanceIds=[instance_id])["TerminatingInstances"]
    assert again["CurrentState"]["Name"] == "shutting-down"

    fake.finish_termination(instance_id)
    assert fake.instance_state(instance_id) == "terminated"
    assert error_of(lambda: ec2.describe_volumes(VolumeIds=[volume]))[0] == "InvalidVolume.NotFound"
    assert error_of(mark)[:2] == ("IncorrectInstanceState", 400)


def test_close_kills_every_vm_process_including_escaped_sessions(tmp_path: Path):
    # The runner kills descendants it has seen (the documented limit): the escapee leaves its session only once
    # the runner lists it, then says so.
    go, escaped = tmp_path / "go", tmp_path / "escaped"
    escapee = (f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.02)\n"
               f"os.setsid(); open({str(escaped)!r}, 'w').close(); time.sleep(600)")
    script = f"#!/bin/bash\npython -c {shlex.quote(escapee)} &\nsleep 600 &\necho booted\nwait\n"
    cloud = FakeAws(tmp_path / "aws")
    try:
        instance_id = launch(cloud, script)["InstanceId"]
        wait_for(lambda: "booted" in cloud.console(instance_id), 60)
        pids = wait_for(lambda: (p := cloud.processes_alive()) and len(p) >= 3 and p, 60, what="3 VM processes")
        wait_for(lambda: len(cloud.tracked(instance_id)) >= 2, 60, what="the runner to record the descendants")
        go.touch()
        wait_for(escaped.exists, 60, what="the escapee to leave its session")
        with pytest.raises(RuntimeError, match="another FakeAws"):
            FakeAws(tmp_path / "other")
    finally:
        cloud.close()
    assert cloud.processes_alive() == []
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with FakeAws(tmp_path / "again") as again:  # closed: a new one may open, and starts empty
        assert again.client("ec2").describe_instances()["Reservations"] == []
