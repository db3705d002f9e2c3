"""What only the AWS backend does, against moto and a VM runner (tests/aws_cloud.py): real boto3/aiobotocore
through the amazon provider's hooks. The scenarios every cloud shares are in tests/test_cloud_backends.py; the AWS
fake, its settings and its view of a job's resources are in tests/clouds.py."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator

import pytest

from airflow_spot_provider.attempt import InstanceState
from airflow_spot_provider.triggers.backup_save import SAVED

from .clouds import AwsCloud, open_cloud, task
from .e2e import run_job, train_command


@pytest.fixture(scope="module")
def aws(tmp_path_factory) -> Iterator[AwsCloud]:
    with open_cloud("aws", tmp_path_factory.mktemp("aws")) as cloud:
        yield cloud


def test_two_hundred_watched_instances_one_describe_per_interval(aws):
    from airflow_spot_provider.triggers.poller import SharedPoller

    ec2 = aws.ec2
    ids = [i["InstanceId"] for i in ec2.run_instances(ImageId=aws.image, InstanceType="t3.micro", MinCount=200,
                                                      MaxCount=200)["Instances"]]
    interval = 0.25

    async def watch_all() -> tuple[int, dict[str, int]]:
        seen = dict.fromkeys(ids, 0)

        async def one(instance_id: str) -> None:
            poller = SharedPoller.for_backend(aws.backend(), interval)
            async with poller.watch(instance_id) as updates:
                async for facts in updates:
                    assert facts.state is InstanceState.RUNNING
                    seen[instance_id] += 1

        aws.fake.reset_calls()
        tasks = [asyncio.create_task(one(i)) for i in ids]
        while min(seen.values()) < 4:  # every watcher got four fresh updates
            await asyncio.sleep(0.05)
        calls = aws.fake.calls["DescribeInstances"]
        for watcher in tasks:
            watcher.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return calls, seen

    calls, seen = asyncio.run(asyncio.wait_for(watch_all(), 120))
    # One call per poll round for all 200 (a round in flight may have started): not 200 per round.
    assert max(seen.values()) <= calls <= max(seen.values()) + 1
    ec2.terminate_instances(InstanceIds=ids)


@pytest.mark.usefixtures("airflow_db")
def test_no_spot_capacity_before_the_deadline_goes_on_demand(aws, tmp_path, dataset):
    aws.fake.fail_launch(aws.capacity_code, spot_only=True)  # spot is sold out everywhere, on-demand is not
    try:
        job = aws.job("late_job")
        job["machine"] = {**job["machine"], "on_demand_if_late": True}
        result = run_job("aws_on_demand_if_late", tmp_path, train_command(dataset, epochs=2), poll_interval=0.3,
                         job_timeout=120, capacity_retry_delay=300, **job)
    finally:
        aws.fake.clear_failures()
    assert result["state"] == "success"
    (attempt,) = result["summary"]["attempts"]
    assert attempt["market"] == "on-demand" and attempt["capacity_waits"] == 0
    assert [e["market"] for e in attempt["launch_errors"]] == ["spot", "spot"]
    assert attempt["price_per_hour"] == attempt["on_demand_price_per_hour"] == aws.on_demand_price
    assert aws.leftovers(task("late_job")) == []


def test_revoked_describe_fails_the_try_and_the_retries_pick_up_the_attempt_and_the_helper(aws, tmp_path):
    """ec2:DescribeInstances refused (UnauthorizedOperation) past describe_failure_timeout: the try fails with
    EC2's error, the attempt (later, its backup-save helper) stays on record untouched, the next try resumes it."""
    from airflow.sdk.exceptions import AirflowException, TaskDeferred

    from airflow_spot_provider.operators.spot_training import SpotTrainingOperator

    from .fake_context import context

    ledger = tmp_path / "ledger.json"
    op = SpotTrainingOperator(task_id="revoked", command=[sys.executable, "-c", "import time; time.sleep(600)"],
                              poll_interval=0.2, describe_failure_timeout=1.0, **aws.job("revoked"))

    def ctx(try_number: int) -> dict:
        return context(ledger, try_number, task_id="revoked")

    def next_event(trigger) -> dict:
        return asyncio.run(asyncio.wait_for(anext(trigger.run()), 120)).payload

    def refused_event(trigger) -> dict:
        aws.fake.refuse("DescribeInstances")
        try:
            return next_event(trigger)
        finally:
            aws.fake.clear_failures()

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
    assert aws.status(attempt.watch.instance_id) == "running"
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx(2))  # reconnects to the same VM
    assert deferred.value.trigger.watch.instance_id == attempt.watch.instance_id

    aws.fake.preempt(attempt.watch.instance_id, notice_seconds=None)
    aws.fake.wait_gone(attempt.watch.instance_id)
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
    aws.backend().terminate(deferred.value.trigger.watch.instance_id)
    aws.backend().release(deferred.value.trigger.watch.instance_id)
    assert aws.leftovers(task("revoked")) == []
