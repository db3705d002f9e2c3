"""Crash safety (decision 2) and trigger idempotency (decision 3), against the real local backend."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_spot_provider.backends.local import LocalBackend
from airflow_spot_provider.operators.spot_training import SpotTrainingOperator
from airflow_spot_provider.triggers.poller import SharedPoller
from airflow_spot_provider.triggers.spot_job import SpotJobTrigger

from .fake_context import context
from .test_local_backend import SLEEPER, processes_with, request, wait_for


def operator(tmp_path, state_dir, command=SLEEPER):
    return SpotTrainingOperator(task_id="train", command=command, checkpoint_uri=f"file://{tmp_path}/store/",
                                poll_interval=0.1, backend_options={"state_dir": str(state_dir)})


def test_worker_killed_right_after_launch_reconnects_to_the_same_attempt(tmp_path, state_dir):
    ledger = tmp_path / "ledger.json"
    crash = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(tmp_path.parent)!r})
        from airflow_spot_provider.backends.local import LocalBackend
        from airflow_spot_provider.operators.spot_training import SpotTrainingOperator
        from tests.fake_context import context
        launch = LocalBackend.launch
        def launch_then_die(self, request):
            launch(self, request)
            os.kill(os.getpid(), 9)  # the worker dies before the instance id reaches the ledger
        LocalBackend.launch = launch_then_die
        op = SpotTrainingOperator(task_id="train", command={SLEEPER!r}, checkpoint_uri="file://{tmp_path}/store/",
                                  backend_options={{"state_dir": {str(state_dir)!r}}})
        op.execute(context(__import__("pathlib").Path({str(ledger)!r})))
    """)
    from .conftest import REPO

    proc = subprocess.run([sys.executable, "-c", crash], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    recorded = json.loads(ledger.read_text())["spot.attempt.0001"]
    assert recorded["status"] == "launching" and recorded["instance_id"] is None

    backend = LocalBackend(state_dir=str(state_dir))
    [instance] = backend.list_instances()
    # The new try runs execute() again: it must find the live attempt by its token, not launch another.
    with pytest.raises(TaskDeferred) as deferred:
        operator(tmp_path, state_dir).execute(context(ledger, try_number=2))
    assert deferred.value.trigger.instance_id == instance["instance_id"]
    assert len(backend.list_instances()) == 1
    assert len(processes_with(str(backend.instances / instance["instance_id"]))) == 2  # one host + one agent
    assert json.loads(ledger.read_text())["spot.attempt.0001"]["instance_id"] == instance["instance_id"]
    backend.terminate(instance["instance_id"])


async def collect(trigger: SpotJobTrigger) -> list[dict]:
    return [event.payload async for event in trigger.run()]


def snapshot(*roots) -> dict:
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes()) for root in roots for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_trigger_run_twice_yields_equal_events_and_changes_nothing(tmp_path, local_backend):
    facts = local_backend.launch(request(tmp_path, [sys.executable, "-c", "print('done')"]))
    wait_for(lambda: local_backend._facts(facts.instance_id).state.value == "terminated")
    kwargs = {"backend": local_backend.serialize(), "instance_id": facts.instance_id, "attempt": 1,
              "checkpoint_uri": f"file://{tmp_path}/store/", "poll_interval": 0.05}
    before = snapshot(local_backend.state_dir, tmp_path / "store")
    first, second = (asyncio.run(collect(SpotJobTrigger(**kwargs))) for _ in range(2))
    assert snapshot(local_backend.state_dir, tmp_path / "store") == before
    for events in (first, second):
        assert len(events) == 1 and events[0]["status"] == "succeeded"
        events[0].pop("observed_at")
    assert first == second
    # Rebuilt from its serialized form (what a restarted triggerer does), it says the same.
    classpath, again = SpotJobTrigger(**kwargs).serialize()
    assert classpath == "airflow_spot_provider.triggers.spot_job.SpotJobTrigger"
    third = asyncio.run(collect(SpotJobTrigger(**again)))
    third[0].pop("observed_at")
    assert third == first


def test_many_triggers_share_one_describe_per_interval(tmp_path, local_backend, monkeypatch):
    jobs = 40
    launched = [local_backend.launch(request(tmp_path, SLEEPER, attempt=n)) for n in range(1, 4)]
    calls = []
    real_describe = LocalBackend.describe

    async def counting_describe(self, ids):
        calls.append(len(ids))
        return await real_describe(self, ids)

    monkeypatch.setattr(LocalBackend, "describe", counting_describe)

    async def scenario():
        interval = 0.2
        triggers = [SpotJobTrigger(backend=local_backend.serialize(), instance_id=launched[n % 3].instance_id,
                                   attempt=n % 3 + 1, checkpoint_uri=f"file://{tmp_path}/store/",
                                   poll_interval=interval) for n in range(jobs)]
        tasks = [asyncio.create_task(collect(t)) for t in triggers]
        await asyncio.sleep(1.0)
        polls_while_running = len(calls)
        for facts in launched:
            await asyncio.to_thread(local_backend.terminate, facts.instance_id)
        results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=20)
        return polls_while_running, results

    started = time.monotonic()
    polls, results = asyncio.run(scenario())
    elapsed = time.monotonic() - started
    assert all(events[0]["status"] == "lost" for events in results)  # user-terminated: not a preemption
    # One describe per interval for all 40 watchers (3 distinct instances), not one per trigger.
    assert polls <= 1.0 / 0.2 + 2
    assert max(calls) == 3
    assert len(calls) <= elapsed / 0.2 + 3
    assert not SharedPoller._registry  # the loop stops when the last watcher leaves


def test_trigger_never_decides_without_markers_and_waits_out_a_missing_grace(tmp_path, local_backend, monkeypatch):
    """A marker read that fails is retried at the next poll (a gone VM without its markers would look lost),
    and a VM missing from the cloud's answers right after launch is not lost before the backend's grace."""
    store_dir = tmp_path / "store"
    facts = local_backend.launch(request(tmp_path, [sys.executable, "-c", "pass"]))
    wait_for(lambda: local_backend._facts(facts.instance_id).state.value == "terminated")
    spot = store_dir / ".spot"
    spot.rename(tmp_path / "spot-held")
    spot.write_text("not a directory: every marker read fails")
    trigger = SpotJobTrigger(backend=local_backend.serialize(), instance_id=facts.instance_id, attempt=1,
                             checkpoint_uri=f"file://{store_dir}/", poll_interval=0.1)

    async def run_with_outage() -> tuple[dict, float]:
        started = time.monotonic()
        task = asyncio.ensure_future(anext(trigger.run()))
        await asyncio.sleep(1.0)
        assert not task.done()  # no event while the markers cannot be read
        spot.unlink()
        (tmp_path / "spot-held").rename(spot)
        event = await asyncio.wait_for(task, 10)
        return event.payload, time.monotonic() - started

    payload, took = asyncio.run(run_with_outage())
    assert payload["status"] == "succeeded" and took >= 1.0

    monkeypatch.setattr(LocalBackend, "missing_grace", 1.0)
    ghost = SpotJobTrigger(backend=local_backend.serialize(), instance_id="i-local-0000000000000000", attempt=9,
                           checkpoint_uri=f"file://{store_dir}/", poll_interval=0.1)

    async def first_event() -> tuple[dict, float]:
        started = time.monotonic()
        event = await asyncio.wait_for(anext(ghost.run()), 10)
        return event.payload, time.monotonic() - started

    payload, took = asyncio.run(first_event())
    assert payload["status"] == "lost" and took >= 1.0
