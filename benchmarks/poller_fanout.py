"""Batched polling vs one poll loop per trigger, measured in the same run (docs/design.md, "Polling is batched").

N triggers watch N running attempts on the local backend for a few seconds. Baseline: every watcher
describes its own instance each interval (what Airflow's EC2StateSensorTrigger does). Ours: the
SharedPoller's one describe per interval for all of them. Prints describe calls and CPU seconds for
both, and their ratios. Usage: python benchmarks/poller_fanout.py [N] [SECONDS] [INTERVAL]
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from airflow_spot_provider.backends.local import LocalBackend
from airflow_spot_provider.triggers.poller import SharedPoller


def fabricate(backend: LocalBackend, n: int) -> list[str]:
    """N attempts that look running (their host is this process): no need to start N process trees."""
    ids = []
    for i in range(n):
        instance_id = f"i-local-bench{i:011d}"
        path = backend.instances / instance_id
        path.mkdir(parents=True)
        (path / "instance.json").write_text(json.dumps({
            "zone": "local-1a", "instance_type": "local.standard", "market": "spot", "launched_at": time.time(),
            "price_per_hour": 0.12, "on_demand_price_per_hour": 0.384}))
        (path / "state.json").write_text(json.dumps({"state": "running", "host_pid": os.getpid()}))
        ids.append(instance_id)
    return ids


class Counting(LocalBackend):
    calls = 0

    async def describe(self, instance_ids):
        Counting.calls += 1
        return await super().describe(instance_ids)


async def per_trigger(backend, ids, seconds, interval):
    async def watch(instance_id):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await backend.describe([instance_id])
            await asyncio.sleep(interval)

    await asyncio.gather(*(watch(i) for i in ids))


async def shared(backend, ids, seconds, interval):
    async def watch(instance_id):
        poller = SharedPoller.for_backend(backend, interval)
        deadline = time.monotonic() + seconds
        async with poller.watch(instance_id) as updates:
            async for _ in updates:
                if time.monotonic() >= deadline:
                    return

    await asyncio.gather(*(watch(i) for i in ids))


def measure(strategy, backend, ids, seconds, interval) -> tuple[int, float]:
    Counting.calls = 0
    cpu = time.process_time()
    asyncio.run(strategy(backend, ids, seconds, interval))
    return Counting.calls, time.process_time() - cpu


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 4.0
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.5
    with tempfile.TemporaryDirectory() as tmp:
        backend = Counting(state_dir=str(Path(tmp) / "state"))
        ids = fabricate(backend, n)
        base_calls, base_cpu = measure(per_trigger, backend, ids, seconds, interval)
        our_calls, our_cpu = measure(shared, backend, ids, seconds, interval)
    print(f"{n} watched attempts, {seconds}s at a {interval}s interval")
    print(f"  one poll per trigger : {base_calls:6d} describe calls, {base_cpu:.3f} CPU s")
    print(f"  shared poller        : {our_calls:6d} describe calls, {our_cpu:.3f} CPU s")
    calls_ratio, cpu_ratio = base_calls / max(our_calls, 1), base_cpu / max(our_cpu, 1e-9)
    print(f"  ratio (baseline/ours): calls x{calls_ratio:.1f}, CPU x{cpu_ratio:.2f}")


if __name__ == "__main__":
    main()
