"""One describe loop per (backend, account, region, interval) in a triggerer process.

Every watching trigger registers its instance id; the loop asks the backend about all of them in
one call per interval and wakes every watcher. API cost stays flat as jobs grow (``docs/design.md``,
"Polling is batched").

A failed call is retried at the next interval; until one succeeds, each watcher of the instances it
asked about gets a :class:`DescribeFailure` (the cloud's error and when the failing streak began)
instead of facts, so every trigger can give up after its own timeout while the loop stays shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar

from airflow_spot_provider.attempt import InstanceFacts
from airflow_spot_provider.backends.base import SpotBackend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DescribeFailure:
    """The describe calls about one instance have failed since ``since`` (``time.monotonic()``)."""

    error: str  # the cloud's error, as the last failed call raised it
    since: float
    calls: int  # failed calls in this streak


class SharedPoller:
    _registry: ClassVar[dict[tuple, SharedPoller]] = {}

    def __init__(self, key: tuple, backend: SpotBackend, interval: float) -> None:
        self.key = key
        self.backend = backend
        self.interval = interval
        self.watchers: dict[str, int] = {}
        self.latest: dict[str, InstanceFacts] = {}
        #: Instances whose describe calls are failing (a success clears the entry: a new streak starts later).
        self.failures: dict[str, DescribeFailure] = {}
        self.generation = 0
        self._changed = asyncio.Condition()
        self._task: asyncio.Task | None = None

    @classmethod
    def for_backend(cls, backend: SpotBackend, interval: float) -> SharedPoller:
        # Keyed by event loop too: each loop (a triggerer, or one dag.test() trigger run) has its own.
        key = (id(asyncio.get_running_loop()), backend.poll_key(), interval)
        poller = cls._registry.get(key)
        if poller is None:
            poller = cls._registry[key] = cls(key, backend, interval)
        return poller

    async def _loop(self) -> None:
        try:
            while self.watchers:
                ids = sorted(self.watchers)
                try:
                    facts = await self.backend.describe(ids)
                    self.latest.update(facts)
                    for instance_id in ids:
                        self.failures.pop(instance_id, None)
                except Exception as err:  # noqa: BLE001 - a failed poll is retried; each watcher decides
                    log.warning("describe of %d instance(s) failed: %s", len(ids), err)
                    self._record_failure(ids, f"{type(err).__name__}: {err}")
                async with self._changed:
                    self.generation += 1
                    self._changed.notify_all()
                await asyncio.sleep(self.interval)
        finally:
            if self._registry.get(self.key) is self:
                self._registry.pop(self.key, None)
            await self.backend.aclose()

    def _record_failure(self, ids: list[str], error: str) -> None:
        now = time.monotonic()
        for instance_id in filter(self.watchers.__contains__, ids):  # not one whose watchers left meanwhile
            streak = self.failures.get(instance_id)
            self.failures[instance_id] = DescribeFailure(
                error, streak.since if streak else now, streak.calls + 1 if streak else 1)

    @contextlib.asynccontextmanager
    async def watch(self, instance_id: str) -> AsyncIterator[AsyncIterator[InstanceFacts | DescribeFailure]]:
        """Yields an iterator with one item per poll: fresh facts for ``instance_id`` when the poll returned
        them, a :class:`DescribeFailure` when it failed (never the stale facts of an earlier poll)."""
        self.watchers[instance_id] = self.watchers.get(instance_id, 0) + 1
        if self._task is None:
            self._registry[self.key] = self
            self._task = asyncio.get_running_loop().create_task(self._loop())

        async def updates() -> AsyncIterator[InstanceFacts | DescribeFailure]:
            seen = self.generation
            while True:
                async with self._changed:
                    await self._changed.wait_for(lambda seen=seen: self.generation > seen)
                    seen = self.generation
                if instance_id in self.failures:
                    yield self.failures[instance_id]
                elif instance_id in self.latest:
                    yield self.latest[instance_id]

        try:
            yield updates()
        finally:
            count = self.watchers.get(instance_id, 1) - 1
            if count:
                self.watchers[instance_id] = count
            else:
                self.watchers.pop(instance_id, None)
                self.latest.pop(instance_id, None)
                self.failures.pop(instance_id, None)
            if not self.watchers and self._task is not None:
                self._task.cancel()
                self._task = None  # a watcher that arrives from now on starts a fresh loop
                self._registry.pop(self.key, None)
