"""The generic trigger: watch one instance through the shared poller, read the attempt's markers, decide.

It only observes (decision 3): safe to run twice (triggerer HA) and to restart from the top. The one
exception is :meth:`on_kill`, Airflow's hook for a user who marked the deferred task failed/success or
cleared it: then the instance is terminated and its disk released (decision 9), unless
``cancel_on_kill`` is off or the task instance is in fact still deferred (Airflow 3.3.2 also calls
``on_kill`` when a trigger moves to another triggerer).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_spot_provider.backends import get_backend
from airflow_spot_provider.backends.base import InstanceFacts, InstanceState, SpotBackend
from airflow_spot_provider.checkpoints.objectstorage import store_for
from airflow_spot_provider.checkpoints.store import CheckpointStore
from airflow_spot_provider.triggers.poller import SharedPoller

#: While the VM runs, markers are read only every Nth poll: the VM's own state change (it powers off
#: after the agent's exit marker) is what normally tells us to look.
MARKER_EVERY = 5


class SpotInstanceTrigger(BaseTrigger):
    """Base for triggers that watch one instance of one attempt. Subclasses implement :meth:`verdict`."""

    def __init__(self, *, backend: dict[str, Any], instance_id: str, attempt: int, checkpoint_uri: str,
                 conn_id: str | None = None, poll_interval: float = 10.0, cancel_on_kill: bool = True) -> None:
        super().__init__()
        self.backend = backend
        self.instance_id = instance_id
        self.attempt = attempt
        self.checkpoint_uri = checkpoint_uri
        self.conn_id = conn_id
        self.poll_interval = poll_interval
        self.cancel_on_kill = cancel_on_kill

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "backend": self.backend, "instance_id": self.instance_id, "attempt": self.attempt,
                "checkpoint_uri": self.checkpoint_uri, "conn_id": self.conn_id,
                "poll_interval": self.poll_interval, "cancel_on_kill": self.cancel_on_kill,
            },
        )

    def _backend(self) -> SpotBackend:
        return get_backend(self.backend["name"], self.backend.get("options"), conn_id=self.conn_id)

    def read_markers(self, store: CheckpointStore) -> dict[str, Any]:
        return store.read_markers(self.attempt)

    def verdict(self, facts: InstanceFacts, markers: dict[str, Any]) -> dict[str, Any] | None:
        """The event payload once the watched work is over, else None."""
        raise NotImplementedError

    async def run(self) -> AsyncIterator[TriggerEvent]:
        backend = self._backend()
        # Off the event loop: building an S3 filesystem runs its own asyncio.run() for credentials.
        store = await asyncio.to_thread(store_for, self.checkpoint_uri, self.conn_id)
        poller = SharedPoller.for_backend(backend, self.poll_interval)
        polls, started = 0, time.monotonic()
        async with poller.watch(self.instance_id) as updates:
            async for facts in updates:
                markers: dict[str, Any] = {}
                if facts.state is not InstanceState.RUNNING or polls % MARKER_EVERY == 0:
                    try:
                        markers = await asyncio.to_thread(self.read_markers, store)
                    except Exception as err:  # noqa: BLE001 - never decide without the markers: ask again
                        self.log.warning("reading the markers of attempt %d failed (%s); next poll retries",
                                         self.attempt, err)
                        continue
                if facts.state is InstanceState.MISSING and time.monotonic() - started < backend.missing_grace:
                    continue  # the cloud's list may not show a just-launched VM yet (eventual consistency)
                polls += 1
                payload = self.verdict(facts, markers)
                if payload is not None:
                    yield TriggerEvent({
                        **payload, "attempt": self.attempt, "instance_id": self.instance_id,
                        "facts": facts.to_dict(), "markers": markers, "observed_at": time.time(),
                    })
                    return

    # -- a user killed the task ------------------------------------------------------------------
    async def task_still_deferred(self) -> bool:
        """Whether Airflow still has the task deferred: then this is a trigger moving between
        triggerers, not a user's kill, and nothing may be destroyed."""
        ti = self.task_instance
        if ti is None:
            return True  # unknown: keep the VM (the sweep finds it if it really is orphaned)
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        states = await asyncio.to_thread(
            RuntimeTaskInstance.get_task_states, dag_id=ti.dag_id, task_ids=[ti.task_id], run_ids=[ti.run_id],
            map_index=ti.map_index,
        )
        state = (states.get(ti.run_id) or {}).get(ti.task_id)
        self.log.info("on_kill: task instance %s is %s", ti.task_id, state)
        return state == "deferred"

    async def on_kill(self) -> None:
        if not self.cancel_on_kill:
            self.log.info("on_kill: cancel_on_kill is off; %s keeps running", self.instance_id)
            return
        try:
            if await self.task_still_deferred():
                self.log.info("on_kill: the task is still deferred (trigger reassigned); nothing destroyed")
                return
        except Exception as err:  # noqa: BLE001 - cannot ask Airflow: keep the VM, the sweep is the backstop
            self.log.warning("on_kill: could not read the task state (%s); %s kept", err, self.instance_id)
            return
        await asyncio.to_thread(self.destroy, self._backend())

    def destroy(self, backend: SpotBackend) -> None:
        self.log.info("on_kill: terminating %s and releasing its disk", self.instance_id)
        backend.terminate(self.instance_id)
        backend.release(self.instance_id)
