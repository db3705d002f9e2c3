"""The trigger's on_kill: it destroys the attempt only when a user really ended the task ("Nothing leaks" in
docs/design.md).
The real mark-failed path through Airflow's triggerer is in test_cluster_scenarios.py."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from airflow_spot_provider.attempt import InstanceState
from airflow_spot_provider.triggers.backup_save import BackupSaveTrigger
from airflow_spot_provider.triggers.base import SpotInstanceTrigger
from airflow_spot_provider.triggers.spot_job import SpotJobTrigger

from .test_local_backend import SLEEPER, request


def trigger(local_backend, instance_id: str, tmp_path, **kw) -> SpotJobTrigger:
    return SpotJobTrigger(backend=local_backend.serialize(), instance_id=instance_id, attempt=1,
                          checkpoint_uri=f"file://{tmp_path}/store/", poll_interval=0.1, **kw)


class TaskEnded(SpotJobTrigger):
    """What Airflow answers after a mark-failed: the task is no longer deferred."""

    async def task_still_deferred(self) -> bool:
        return False


class HelperTaskEnded(BackupSaveTrigger):
    """The same answer while the task waits for a backup-save helper."""

    async def task_still_deferred(self) -> bool:
        return False


def start_on_kill(trigger: SpotInstanceTrigger) -> Future:
    """Run the trigger's on_kill in a thread, so a test can look at the cloud while it runs (or hangs)."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(asyncio.run, trigger.on_kill())
    finally:
        pool.shutdown(wait=False)


def stalled_python(tmp_path: Path) -> str:
    """A VM image whose Python never returns: a backup-save helper on it is still copying when killed."""
    path = tmp_path / "stalled-python"
    path.write_text("#!/bin/sh\nexec sleep 600\n")
    path.chmod(0o755)
    return str(path)


def test_on_kill_keeps_the_vm_when_switched_off_or_when_airflow_cannot_say(tmp_path, local_backend):
    facts = local_backend.launch(request(tmp_path, SLEEPER))
    asyncio.run(trigger(local_backend, facts.instance_id, tmp_path, cancel_on_kill=False).on_kill())
    assert local_backend._facts(facts.instance_id).state is InstanceState.RUNNING
    # No task instance to ask about (a trigger outside a triggerer): never destroy on a guess.
    asyncio.run(trigger(local_backend, facts.instance_id, tmp_path).on_kill())
    assert local_backend._facts(facts.instance_id).state is InstanceState.RUNNING
    assert trigger(local_backend, "x", tmp_path, cancel_on_kill=False).serialize()[1]["cancel_on_kill"] is False


def test_on_kill_after_the_task_ended_terminates_and_releases(tmp_path, local_backend):
    facts = local_backend.launch(request(tmp_path, SLEEPER))
    asyncio.run(TaskEnded(**trigger(local_backend, facts.instance_id, tmp_path).serialize()[1]).on_kill())
    assert local_backend._facts(facts.instance_id).state is InstanceState.TERMINATED
    assert not (local_backend.instances / facts.instance_id / "disk").exists()


def test_on_kill_finishes_when_airflow_cancels_it_again(tmp_path, local_backend):
    """Airflow 3.3 sends a trigger in on_kill the user-action cancel again at every sync of the triggerer
    (about once a second) and cancels it after on_kill_timeout: the kill must go on regardless."""
    facts = local_backend.launch(request(tmp_path, SLEEPER))

    async def scenario() -> None:
        asked, answered = asyncio.Event(), asyncio.Event()

        class SlowAnswer(SpotJobTrigger):
            async def task_still_deferred(self) -> bool:
                asked.set()
                await answered.wait()  # Airflow has not answered yet when the next cancel comes
                return False

        killing = asyncio.create_task(SlowAnswer(**trigger(local_backend, facts.instance_id, tmp_path)
                                                 .serialize()[1]).on_kill())
        await asked.wait()
        killing.cancel("user-action")
        with pytest.raises(asyncio.CancelledError):
            await killing
        answered.set()
        for _ in range(600):  # bounded: at most about a minute on a busy machine
            if not (local_backend.instances / facts.instance_id / "disk").exists():
                return
            await asyncio.sleep(0.1)

    asyncio.run(scenario())
    assert local_backend._facts(facts.instance_id).state is InstanceState.TERMINATED
    assert not (local_backend.instances / facts.instance_id / "disk").exists()
