"""The generic trigger: watch one instance through the shared poller, read the attempt's markers, decide.

When the cloud keeps refusing to describe the instance (revoked credentials, a deleted subnet, a wrong
region) for longer than ``describe_failure_timeout`` seconds in a row, it yields an ``error`` event with
the cloud's error instead of polling forever.

It only observes (``docs/design.md``, "Triggers only observe"): safe to run twice (triggerer HA) and to
restart from the top. The one exception is :meth:`on_kill`, Airflow's hook for a user who marked the deferred
task failed/success or cleared it: then the instance is terminated and its disk released, unless
``cancel_on_kill`` is off or the task instance is in fact still deferred (Airflow 3.3.2 also calls
``on_kill`` when a trigger moves to another triggerer).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_spot_provider.attempt import DESCRIBE_ERROR, InstanceFacts, InstanceState, Markers
from airflow_spot_provider.backends import get_backend
from airflow_spot_provider.backends.base import SpotBackend
from airflow_spot_provider.checkpoints.objectstorage import store_for
from airflow_spot_provider.checkpoints.store import CheckpointStore
from airflow_spot_provider.triggers.poller import DescribeFailure, SharedPoller

#: While the VM runs, markers are read only every Nth poll: the VM's own state change (it powers off
#: after the agent's exit marker) is what normally tells us to look.
MARKER_EVERY = 5
#: Kills in progress (see :meth:`SpotInstanceTrigger.on_kill`).
_KILLS: set[asyncio.Future[None]] = set()
#: The task-state warm-up of each event loop (a triggerer process has one): see ``_task_state_api_warmed``.
_WARM_UPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task] = weakref.WeakKeyDictionary()
#: Seconds the describe calls about the instance may fail in a row before the trigger gives up.
DESCRIBE_FAILURE_TIMEOUT = 600.0


@dataclass(frozen=True)
class Watch:
    """What a trigger watches: one VM of one attempt. These are the trigger's (serialized) arguments."""

    backend: dict[str, Any]  # SpotBackend.serialize()
    instance_id: str
    attempt: int
    checkpoint_uri: str
    conn_id: str | None = None
    poll_interval: float = 10.0
    cancel_on_kill: bool = True
    describe_failure_timeout: float = DESCRIBE_FAILURE_TIMEOUT


class SpotInstanceTrigger(BaseTrigger):
    """Base for triggers that watch one instance of one attempt. Subclasses implement :meth:`verdict`."""

    def __init__(self, **watch: Any) -> None:
        super().__init__()
        self.watch = Watch(**watch)

    @classmethod
    def of(cls, watch: Watch) -> SpotInstanceTrigger:
        return cls(**asdict(watch))

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", asdict(self.watch)

    def _backend(self) -> SpotBackend:
        return get_backend(self.watch.backend["name"], self.watch.backend.get("options"), conn_id=self.watch.conn_id)

    def read_markers(self, store: CheckpointStore) -> Markers:
        return Markers(store.read_markers(self.watch.attempt))

    def verdict(self, facts: InstanceFacts, markers: Markers) -> dict[str, Any] | None:
        """The event payload once the watched work is over, else None."""
        raise NotImplementedError

    async def run(self) -> AsyncIterator[TriggerEvent]:
        self._task_state_api_warmed().add_done_callback(self._log_task_state_api)
        watch = self.watch
        backend = self._backend()
        # Off the event loop: building an S3 filesystem runs its own asyncio.run() for credentials.
        store = await asyncio.to_thread(store_for, watch.checkpoint_uri, watch.conn_id)
        poller = SharedPoller.for_backend(backend, watch.poll_interval)
        polls, started = 0, time.monotonic()
        async with poller.watch(watch.instance_id) as updates:
            async for update in updates:
                if isinstance(update, DescribeFailure):
                    failing_for = time.monotonic() - update.since
                    if failing_for <= watch.describe_failure_timeout:
                        continue  # the poller asks again at the next interval
                    self.log.error("describe of %s failed for %.0fs (%d calls): %s", watch.instance_id,
                                   failing_for, update.calls, update.error)
                    yield TriggerEvent({
                        "status": DESCRIBE_ERROR, "reason": update.error, "attempt": watch.attempt,
                        "instance_id": watch.instance_id, "failing_seconds": round(failing_for, 3),
                        "failed_calls": update.calls, "observed_at": time.time(),
                    })
                    return
                facts = update
                markers = Markers()
                if facts.state is not InstanceState.RUNNING or polls % MARKER_EVERY == 0:
                    try:
                        markers = await asyncio.to_thread(self.read_markers, store)
                    except Exception as err:  # noqa: BLE001 - never decide without the markers: ask again
                        self.log.warning("reading the markers of attempt %d failed (%s); next poll retries",
                                         watch.attempt, err)
                        continue
                if facts.state is InstanceState.MISSING and time.monotonic() - started < backend.missing_grace:
                    continue  # the cloud's list may not show a just-launched VM yet (eventual consistency)
                polls += 1
                payload = self.verdict(facts, markers)
                if payload is not None:
                    yield TriggerEvent(payload)
                    return

    # -- a user killed the task ------------------------------------------------------------------
    async def task_state(self) -> str | None:
        """The task instance's state in Airflow (None when this trigger does not know its task)."""
        ti = self.task_instance
        if ti is None:
            return None
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        states = await asyncio.to_thread(
            RuntimeTaskInstance.get_task_states, dag_id=ti.dag_id, task_ids=[ti.task_id], run_ids=[ti.run_id],
            map_index=ti.map_index,
        )
        return (states.get(ti.run_id) or {}).get(ti.task_id)

    def _task_state_api_warmed(self) -> asyncio.Task:
        """Ask for a task state once per triggerer process, when its first trigger starts, in the background.

        The first such request builds the triggerer's in-process Execution API: seconds, and tens of seconds
        on a busy machine. Paid here, it is not paid inside ``on_kill``'s 30 s budget.
        """
        loop = asyncio.get_running_loop()
        warm = _WARM_UPS.get(loop)
        if warm is None:
            warm = _WARM_UPS[loop] = loop.create_task(self.task_state())
        return warm

    def _log_task_state_api(self, warm: asyncio.Task) -> None:
        if not warm.cancelled() and warm.exception() is None:
            self.log.info("task state API ready: on_kill can ask Airflow at once")

    async def task_still_deferred(self) -> bool:
        """Whether Airflow still has the task deferred: then this is a trigger moving between
        triggerers, not a user's kill, and nothing may be destroyed."""
        if self.task_instance is None:
            return True  # unknown: keep the VM (the sweep finds it if it really is orphaned)
        state = await self.task_state()
        self.log.info("on_kill: task instance %s is %s", self.task_instance.task_id, state)
        return state == "deferred"

    async def on_kill(self) -> None:
        if not self.watch.cancel_on_kill:
            self.log.info("on_kill: cancel_on_kill is off; %s keeps running", self.watch.instance_id)
            return
        # Airflow 3.3 cancels a trigger in on_kill again at every triggerer sync (about once a second) and
        # after on_kill_timeout: the kill runs as its own task, which such a cancel does not cut short.
        kill = asyncio.ensure_future(self._kill())
        _KILLS.add(kill)  # the event loop keeps only a weak reference to a task
        kill.add_done_callback(_KILLS.discard)
        await asyncio.shield(kill)

    async def _kill(self) -> None:
        try:
            if await self.task_still_deferred():
                self.log.info("on_kill: the task is still deferred (trigger reassigned); nothing destroyed")
                return
        except Exception as err:  # noqa: BLE001 - cannot ask Airflow: keep the VM, the sweep is the backstop
            self.log.warning("on_kill: could not read the task state (%s); %s kept", err, self.watch.instance_id)
            return
        try:
            await asyncio.to_thread(self.destroy, self._backend())
        except Exception:  # logged here: once on_kill was cancelled, nobody awaits this task any more
            self.log.exception("on_kill: removing %s failed; the sweep removes what is left", self.watch.instance_id)

    def destroy(self, backend: SpotBackend) -> None:
        # cancel, not terminate + release: those wait for the VM to be gone, longer than on_kill's budget.
        self.log.info("on_kill: terminating %s and releasing its disk", self.watch.instance_id)
        backend.cancel(self.watch.instance_id)
