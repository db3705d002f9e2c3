"""Watching N EC2 spot attempts from one triggerer: our triggers vs Airflow's EC2StateSensorTrigger, against moto.

Both run N triggers in one event loop for a few seconds, as a triggerer does. Baseline: the amazon
provider's ``EC2StateSensorTrigger`` (one DescribeInstances per trigger per interval, a fresh
aiobotocore client for each). Ours: ``SpotJobTrigger`` (one batched DescribeInstances per interval for
all of them through the shared poller, plus marker reads from S3). Prints EC2 API requests, how often
each instance was actually observed, and the event loop thread's CPU seconds, with ratios.
Usage: python benchmarks/aws_polling.py [N] [SECONDS] [INTERVAL]
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.aws_cloud import FakeAws  # noqa: E402 - the offline AWS lives with the tests

CONN_ID = "bench_aws"


async def run_for(triggers: list, seconds: float) -> float:
    """Run the triggers' generators for ``seconds``; returns the loop thread's CPU seconds."""
    async def drain(trigger) -> None:
        async for _ in trigger.run():
            return

    cpu = time.thread_time()
    tasks = [asyncio.create_task(drain(t)) for t in triggers]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return time.thread_time() - cpu


def measure(fake: FakeAws, triggers: list, seconds: float) -> tuple[dict[str, int], float]:
    fake.reset_calls()
    cpu = asyncio.run(run_for(triggers, seconds))
    return dict(fake.calls), cpu


def main(n: int = 100, seconds: float = 6.0, interval: float = 1.0) -> None:
    from airflow.providers.amazon.aws.triggers.ec2 import EC2StateSensorTrigger

    from airflow_spot_provider.triggers.spot_job import SpotJobTrigger

    with FakeAws(Path(tempfile.mkdtemp(prefix="bench-aws-"))) as fake:
        name, value = fake.airflow_conn(CONN_ID)
        os.environ[name] = value
        fake.client("s3").create_bucket(Bucket="bench")
        ec2 = fake.client("ec2")
        ami = ec2.describe_images()["Images"][0]["ImageId"]
        ids = [i["InstanceId"] for i in ec2.run_instances(
            ImageId=ami, InstanceType="m5.large", MinCount=n, MaxCount=n,
            InstanceMarketOptions={"MarketType": "spot"})["Instances"]]
        backend = {"name": "aws", "options": {"region_name": fake.region}}
        ours = [SpotJobTrigger(backend=backend, instance_id=i, attempt=k + 1, checkpoint_uri="s3://bench/job/",
                               conn_id=CONN_ID, poll_interval=interval) for k, i in enumerate(ids)]
        baseline = [EC2StateSensorTrigger(instance_id=i, target_state="stopped", aws_conn_id=CONN_ID,
                                          region_name=fake.region, poll_interval=interval) for i in ids]
        base_calls, base_cpu = measure(fake, baseline, seconds)
        our_calls, our_cpu = measure(fake, ours, seconds)
        ec2.terminate_instances(InstanceIds=ids)

    base_describe, our_describe = base_calls.get("DescribeInstances", 0), our_calls.get("DescribeInstances", 0)
    intended = seconds / interval
    print(f"{n} running spot instances watched for {seconds:g}s at a {interval:g}s interval "
          f"(intended: {intended:.0f} observations per instance)")
    print(f"  EC2StateSensorTrigger: {base_describe} DescribeInstances, "
          f"{base_describe / n:.1f} observations per instance, loop CPU {base_cpu:.2f}s")
    print(f"  SpotJobTrigger:        {our_describe} DescribeInstances, "
          f"{our_describe:.0f} observations per instance, loop CPU {our_cpu:.2f}s")
    print(f"  ratios: observations per instance x{our_describe / max(base_describe / n, 1e-9):.1f} more, "
          f"DescribeInstances per observation x{n:.0f} fewer, CPU x{base_cpu / max(our_cpu, 1e-9):.1f} lower")


if __name__ == "__main__":
    main(*(int(a) if i == 0 else float(a) for i, a in enumerate(sys.argv[1:])))
