"""SpotJobTrigger: watches one attempt and yields one classified event. It only observes.

It never launches, terminates or writes (decision 3), so it is safe to run twice (triggerer HA)
and to restart from the top (triggerer restart). Everything the operator needs on resume is in the
event payload, because ``dag.test()`` drops the kwargs given to ``defer()``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_spot_provider.backends import get_backend
from airflow_spot_provider.backends.base import InstanceState, classify
from airflow_spot_provider.checkpoints.objectstorage import store_for
from airflow_spot_provider.triggers.poller import SharedPoller

#: While the VM runs, markers are read only every Nth poll: the VM's own state change (it powers off
#: after the agent's exit marker) is what normally tells us to look.
MARKER_EVERY = 5


class SpotJobTrigger(BaseTrigger):
    def __init__(self, *, backend: dict[str, Any], instance_id: str, attempt: int, checkpoint_uri: str,
                 conn_id: str | None = None, poll_interval: float = 10.0) -> None:
        super().__init__()
        self.backend = backend
        self.instance_id = instance_id
        self.attempt = attempt
        self.checkpoint_uri = checkpoint_uri
        self.conn_id = conn_id
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "backend": self.backend, "instance_id": self.instance_id, "attempt": self.attempt,
                "checkpoint_uri": self.checkpoint_uri, "conn_id": self.conn_id,
                "poll_interval": self.poll_interval,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        backend = get_backend(self.backend["name"], self.backend.get("options"))
        store = store_for(self.checkpoint_uri, self.conn_id)
        poller = SharedPoller.for_backend(backend, self.poll_interval)
        polls = 0
        async with poller.watch(self.instance_id) as updates:
            async for facts in updates:
                markers: dict[str, Any] = {}
                if facts.state is not InstanceState.RUNNING or polls % MARKER_EVERY == 0:
                    markers = await asyncio.to_thread(store.read_markers, self.attempt)
                polls += 1
                verdict = classify(facts, markers)
                if verdict.status.terminal:
                    yield TriggerEvent({
                        "status": verdict.status.value, "reason": verdict.reason, "exit_code": verdict.exit_code,
                        "attempt": self.attempt, "instance_id": self.instance_id,
                        "facts": facts.to_dict(), "markers": markers, "observed_at": time.time(),
                    })
                    return
