"""Polling until a condition holds, for tests that watch processes, clouds, stores and Airflow."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError, AssertionError):
    """The condition did not hold in time: a test failure, and a TimeoutError for code that retries."""


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> T:
    """The predicate's first truthy value; :class:`WaitTimeout` when ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
