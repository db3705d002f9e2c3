"""A spot market for the emulated clouds: reclaims attempts on a plan while a job runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Chaos(threading.Thread):
    """``plan[attempt] = (seconds after it is first seen running, notice seconds or None for no notice)``.

    ``running()`` lists the job's running attempts as (instance id, attempt number); ``preempt(id, notice)``
    reclaims one through the cloud fake's control layer.
    """

    def __init__(self, running: Callable[[], list[tuple[str, int]]], preempt: Callable[[str, float | None], None],
                 plan: dict[int, tuple[float, float | None]]) -> None:
        super().__init__(daemon=True)
        self.running, self.preempt, self.plan = running, preempt, plan
        self.seen: dict[str, float] = {}
        self.done: set[str] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for instance_id, attempt in self.running():
                running_for = time.monotonic() - self.seen.setdefault(instance_id, time.monotonic())
                if attempt in self.plan and instance_id not in self.done and running_for >= self.plan[attempt][0]:
                    self.done.add(instance_id)
                    self.preempt(instance_id, self.plan[attempt][1])
            time.sleep(0.2)
