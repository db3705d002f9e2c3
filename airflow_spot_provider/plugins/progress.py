"""A running attempt's progress, read from the agent's marker in the checkpoint store.

The ledger is not rewritten while the task is deferred, so the UI would show the progress of the last relaunch;
the agent's ``progress`` marker is current. Read with the task's connection and kept a few seconds, so a page
that refreshes every few seconds costs one storage read per attempt and interval, whoever is looking.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from airflow_spot_provider.attempt import Markers

log = logging.getLogger(__name__)

#: Seconds a progress read is reused.
TTL = 5.0
_cache: dict[tuple[str, str | None, int], tuple[float, dict[str, Any] | None]] = {}
_lock = threading.Lock()


def live_progress(checkpoint_uri: str | None, conn_id: str | None, attempt: int) -> dict[str, Any] | None:
    """The attempt's last progress report (None: unknown, or the store could not be read)."""
    if not checkpoint_uri:
        return None
    key = (checkpoint_uri, conn_id, attempt)
    with _lock:
        cached = _cache.get(key)
    if cached is not None and time.monotonic() - cached[0] < TTL:
        return cached[1]
    try:
        from airflow_spot_provider.checkpoints.objectstorage import store_for

        progress = Markers(store_for(checkpoint_uri, conn_id).read_markers(attempt)).progress
    except Exception as err:  # noqa: BLE001 - the page shows the ledger's progress instead
        log.warning("progress of attempt %d in %s not readable: %s", attempt, checkpoint_uri, err)
        progress = None
    with _lock:
        _cache[key] = (time.monotonic(), progress)
    return progress
