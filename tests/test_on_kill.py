"""The trigger's on_kill: it destroys the attempt only when a user really ended the task (decision 9).
The real mark-failed path through Airflow's triggerer is in test_cluster_reliability.py."""

from __future__ import annotations

import asyncio

from airflow_spot_provider.backends.base import InstanceState
from airflow_spot_provider.triggers.spot_job import SpotJobTrigger

from .test_local_backend import SLEEPER, request


def trigger(local_backend, instance_id: str, tmp_path, **kw) -> SpotJobTrigger:
    return SpotJobTrigger(backend=local_backend.serialize(), instance_id=instance_id, attempt=1,
                          checkpoint_uri=f"file://{tmp_path}/store/", poll_interval=0.1, **kw)


class TaskEnded(SpotJobTrigger):
    """What Airflow answers after a mark-failed: the task is no longer deferred."""

    async def task_still_deferred(self) -> bool:
        return False


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
