"""A spot market for the emulated clouds: reclaims attempts at planned points of a job's progress."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from airflow_spot_provider.checkpoints.latest import checkpoint_step, compile_pattern, is_temporary_name

from .e2e import CKPT_PATTERN


class Chaos(threading.Thread):
    """``plan[attempt] = (checkpoint step, notice seconds or None for no notice)``: reclaim the attempt once its
    VM's checkpoint directory holds a checkpoint of that step or later. A point in the job's progress, not a
    time, so the plan holds however loaded the machine is.

    ``running()`` lists the job's running attempts as (instance id, attempt number); ``checkpoints(id)`` is the
    VM's checkpoint directory (on its data disk); ``preempt(id, notice)`` reclaims one through the cloud fake's
    control layer.
    """

    def __init__(self, running: Callable[[], list[tuple[str, int]]], checkpoints: Callable[[str], Path],
                 preempt: Callable[[str, float | None], None], plan: dict[int, tuple[int, float | None]]) -> None:
        super().__init__(daemon=True)
        self.running, self.checkpoints, self.preempt, self.plan = running, checkpoints, preempt, plan
        self.pattern = compile_pattern(CKPT_PATTERN)
        self.done: set[str] = set()
        self.stop = threading.Event()

    def reached(self, instance_id: str, step: int) -> bool:
        try:
            names = os.listdir(self.checkpoints(instance_id))
        except FileNotFoundError:
            return False
        # A checkpoint being written (a hidden or ``.tmp`` name) does not count: it may be only half on the disk.
        return any((found := checkpoint_step(name, self.pattern)) is not None and found >= step
                   for name in names if not is_temporary_name(name))

    def run(self) -> None:
        while not self.stop.is_set():
            for instance_id, attempt in self.running():
                if attempt in self.plan and instance_id not in self.done and self.reached(instance_id,
                                                                                          self.plan[attempt][0]):
                    self.done.add(instance_id)
                    self.preempt(instance_id, self.plan[attempt][1])
            self.stop.wait(0.1)
