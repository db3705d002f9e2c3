"""Crash safety and trigger idempotency (``docs/design.md``: "State lives in the ledger", "Triggers only observe"),
against the real local backend."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import textwrap
import time

import pytest
from airflow.sdk.exceptions import AirflowException, TaskDeferred

from airflow_spot_provider.attempt import InstanceFacts, InstanceState
from airflow_spot_provider.backends.local import LocalBackend
from airflow_spot_provider.operators.spot_training import SpotTrainingOperator
from airflow_spot_provider.triggers.backup_save import BackupSaveTrigger
from airflow_spot_provider.triggers.poller import DescribeFailure, SharedPoller
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
    assert deferred.value.trigger.watch.instance_id == instance.instance_id
    assert len(backend.list_instances()) == 1
    assert len(processes_with(str(backend.instances / instance.instance_id))) == 2  # one host + one agent
    assert json.loads(ledger.read_text())["spot.attempt.0001"]["instance_id"] == instance.instance_id
    backend.terminate(instance.instance_id)


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
        watching = time.monotonic()
        tasks = [asyncio.create_task(collect(t)) for t in triggers]
        await asyncio.sleep(1.0)
        polls_while_running, watched = len(calls), time.monotonic() - watching
        for facts in launched:
            await asyncio.to_thread(local_backend.terminate, facts.instance_id)
        results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=20)
        return polls_while_running, watched, results

    started = time.monotonic()
    polls, watched, results = asyncio.run(scenario())
    elapsed = time.monotonic() - started
    assert all(events[0]["status"] == "lost" for events in results)  # user-terminated: not a preemption
    # One describe per interval for all 40 watchers (3 distinct instances), not one per trigger; measured against
    # the time that really passed, which a loaded machine stretches.
    assert polls <= watched / 0.2 + 2
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
        event = await asyncio.wait_for(task, 60)
        return event.payload, time.monotonic() - started

    payload, took = asyncio.run(run_with_outage())
    assert payload["status"] == "succeeded" and took >= 1.0

    monkeypatch.setattr(LocalBackend, "missing_grace", 1.0)
    ghost = SpotJobTrigger(backend=local_backend.serialize(), instance_id="i-local-0000000000000000", attempt=9,
                           checkpoint_uri=f"file://{store_dir}/", poll_interval=0.1)

    async def first_event() -> tuple[dict, float]:
        started = time.monotonic()
        event = await asyncio.wait_for(anext(ghost.run()), 60)
        return event.payload, time.monotonic() - started

    payload, took = asyncio.run(first_event())
    assert payload["status"] == "lost" and took >= 1.0


# -- describe calls that keep failing ------------------------------------------------------------------
@contextlib.contextmanager
def describe_outage(backend: LocalBackend, instance_id: str):
    """The local cloud cannot answer about the instance: its record becomes a directory, so every describe
    call that asks about it raises (IsADirectoryError: unlike a chmod, this stops root too). The "VM" itself
    keeps running: its host read the record when it started."""
    record = backend.instances / instance_id / "instance.json"
    held = record.with_name("instance.json.held")
    record.rename(held)
    record.mkdir()
    try:
        yield
    finally:
        record.rmdir()
        held.rename(record)


def test_describe_failing_past_the_timeout_ends_every_watch_with_the_clouds_error(tmp_path, local_backend):
    instance_id = local_backend.launch(request(tmp_path, SLEEPER)).instance_id
    kwargs = {"backend": local_backend.serialize(), "instance_id": instance_id, "attempt": 1,
              "checkpoint_uri": f"file://{tmp_path}/store/", "poll_interval": 0.1, "describe_failure_timeout": 1.0}

    async def watch_both() -> tuple[list[dict], int]:
        # An attempt's trigger and a backup-save trigger share one describe loop; both must learn the error.
        tasks = [asyncio.ensure_future(anext(cls(**kwargs).run())) for cls in (SpotJobTrigger, BackupSaveTrigger)]
        while not SharedPoller._registry:
            await asyncio.sleep(0.01)
        pollers = len(SharedPoller._registry)
        return [event.payload for event in await asyncio.gather(*tasks)], pollers

    with describe_outage(local_backend, instance_id):
        payloads, pollers = asyncio.run(asyncio.wait_for(watch_both(), 60))
    assert pollers == 1
    for payload in payloads:
        assert payload["status"] == "error"
        assert payload["reason"].startswith("IsADirectoryError:") and "instance.json" in payload["reason"]
        assert (payload["attempt"], payload["instance_id"]) == (1, instance_id)
        assert payload["failing_seconds"] >= 1.0 and payload["failed_calls"] >= 2 and payload["observed_at"]
        assert "facts" not in payload  # no facts were observed: none are reported
    # The trigger only observed: the "VM" runs on.
    assert local_backend._facts(instance_id).state is InstanceState.RUNNING
    assert not SharedPoller._registry


def test_describe_failures_shorter_than_the_timeout_do_not_end_the_watch(tmp_path, local_backend):
    facts = local_backend.launch(request(tmp_path, [sys.executable, "-c", "pass"]))
    wait_for(lambda: local_backend._facts(facts.instance_id).state.value == "terminated")
    trigger = SpotJobTrigger(backend=local_backend.serialize(), instance_id=facts.instance_id, attempt=1,
                             checkpoint_uri=f"file://{tmp_path}/store/", poll_interval=0.1,
                             describe_failure_timeout=60.0)

    def failed_calls() -> int:
        return max((p.failures[facts.instance_id].calls for p in list(SharedPoller._registry.values())
                    if facts.instance_id in p.failures), default=0)

    async def run_with_outage() -> dict:
        with describe_outage(local_backend, facts.instance_id):
            task = asyncio.ensure_future(anext(trigger.run()))
            while failed_calls() < 3:
                await asyncio.sleep(0.02)
            assert not task.done()  # three failed polls, well inside the timeout: still watching
        return (await task).payload

    payload = asyncio.run(asyncio.wait_for(run_with_outage(), 60))
    assert payload["status"] == "succeeded"


def test_a_successful_describe_starts_a_new_failing_streak(tmp_path, local_backend):
    facts = local_backend.launch(request(tmp_path, [sys.executable, "-c", "pass"]))
    wait_for(lambda: local_backend._facts(facts.instance_id).state.value == "terminated")

    async def next_of(updates, kind):
        async for update in updates:
            if isinstance(update, kind):
                return update
        raise AssertionError("the poller stopped")

    async def two_outages() -> tuple[DescribeFailure, float, DescribeFailure]:
        poller = SharedPoller.for_backend(local_backend, 0.05)
        async with poller.watch(facts.instance_id) as updates:
            with describe_outage(local_backend, facts.instance_id):
                first = await next_of(updates, DescribeFailure)
                while first.calls < 2:
                    first = await next_of(updates, DescribeFailure)
            await next_of(updates, InstanceFacts)
            answered = time.monotonic()
            with describe_outage(local_backend, facts.instance_id):
                second = await next_of(updates, DescribeFailure)
        return first, answered, second

    first, answered, second = asyncio.run(asyncio.wait_for(two_outages(), 30))
    assert first.since < answered < second.since  # the streak is counted from its own first failure
    assert "IsADirectoryError" in first.error and "IsADirectoryError" in second.error


def test_describe_error_fails_the_try_and_keeps_the_attempt_for_the_retry(tmp_path, state_dir, local_backend):
    ledger = tmp_path / "ledger.json"
    op = SpotTrainingOperator(task_id="train", command=SLEEPER, checkpoint_uri=f"file://{tmp_path}/store/",
                              poll_interval=0.1, describe_failure_timeout=1.0,
                              backend_options={"state_dir": str(state_dir)})
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context(ledger))
    _, kwargs = deferred.value.trigger.serialize()  # what the triggerer rebuilds it from
    assert kwargs["describe_failure_timeout"] == 1.0
    instance_id = kwargs["instance_id"]
    with describe_outage(local_backend, instance_id):
        event = asyncio.run(asyncio.wait_for(collect(SpotJobTrigger(**kwargs)), 60))[0]
    before = ledger.read_text()
    with pytest.raises(AirflowException, match="IsADirectoryError") as failed:
        op.execute_complete(context(ledger), event)
    assert instance_id in str(failed.value)
    # The attempt is on record as it was (running, its instance), and nothing was terminated or released.
    assert ledger.read_text() == before
    recorded = json.loads(before)["spot.attempt.0001"]
    assert (recorded["status"], recorded["instance_id"], recorded["released"]) == ("running", instance_id, False)
    assert local_backend._facts(instance_id).state is InstanceState.RUNNING
    # The next try reconnects to it instead of launching another VM.
    with pytest.raises(TaskDeferred) as again:
        op.execute(context(ledger, try_number=2))
    assert again.value.trigger.watch.instance_id == instance_id
    assert [i.instance_id for i in local_backend.list_instances()] == [instance_id]
