"""Helpers for training scripts run by SpotTrainingOperator.

Nothing here is required: a script only needs the environment variables below. The helpers make
the common parts (finding the checkpoint to resume from, writing checkpoints atomically, reacting
to the interruption notice, reporting progress) one line each. This module imports no Airflow.

Environment contract (set on every backend):

- ``SPOT_CHECKPOINT_DIR``: directory to write checkpoints to; restored files are already there.
- ``SPOT_RESUME_FROM``: path of the restored latest checkpoint, empty on a fresh start.
- ``SPOT_ATTEMPT``: attempt number, 1-based.
- ``SPOT_NOTICE_FILE``: appears when an interruption notice arrives (SIGTERM is sent too).
- ``SPOT_PROGRESS_FILE``: where :func:`report_progress` writes (shown in the ledger and task log).

Training frameworks have their own modules, each imported on its own (this package imports none):
``resumable.torch`` (a plain PyTorch loop), ``resumable.lightning`` and ``resumable.huggingface``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from airflow_spot_provider.checkpoints.latest import DEFAULT_CHECKPOINT_PATTERN, is_temporary_name, latest_name

#: Exit code for "stopped because of an interruption notice" (128 + SIGTERM, like a killed process).
INTERRUPTED_EXIT_CODE = 143


def checkpoint_dir() -> Path:
    """The directory to write checkpoints to (``./checkpoints`` outside a spot job); created if missing."""
    path = Path(os.environ.get("SPOT_CHECKPOINT_DIR") or "checkpoints")
    path.mkdir(parents=True, exist_ok=True)
    return path


def resume_from() -> Path | None:
    """The checkpoint restored for this attempt, or None on a fresh start."""
    value = os.environ.get("SPOT_RESUME_FROM", "")
    return Path(value) if value else None


def attempt() -> int:
    """The 1-based attempt number (1 outside a spot job)."""
    return int(os.environ.get("SPOT_ATTEMPT") or 1)


def latest_checkpoint(directory: str | os.PathLike[str] | None = None,
                      pattern: str = DEFAULT_CHECKPOINT_PATTERN) -> Path | None:
    """The checkpoint with the highest step number in ``directory`` (numbers compare as numbers).

    Temporary files (``*.tmp``) and hidden names are ignored, so a half-written checkpoint is
    never returned when checkpoints are written with :func:`atomic_path`.
    """
    root = Path(directory) if directory is not None else checkpoint_dir()
    if not root.is_dir():
        return None
    names = [p.name for p in root.iterdir() if not is_temporary_name(p.name)]
    name = latest_name(names, pattern)
    return root / name if name else None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it into place only if the block succeeds.

    Example::

        with atomic_path(ckpt_dir / f"ckpt-{step:08d}.npz") as tmp, open(tmp, "wb") as handle:
            numpy.savez(handle, **state)  # a file object: savez would append ".npz" to a name
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:  # the data must be on disk before the name is
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


class InterruptionNotice:
    """Tells a training loop that the VM is about to be taken away.

    ``requested`` turns true when SIGTERM arrives or when ``SPOT_NOTICE_FILE`` exists (the agent
    does both). Check it between steps, save a checkpoint, and exit with :data:`INTERRUPTED_EXIT_CODE`.
    """

    def __init__(self) -> None:
        self._signalled = False
        self._received_at: float | None = None
        notice = os.environ.get("SPOT_NOTICE_FILE", "")
        self.notice_file = Path(notice) if notice else None

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signalled = True
        self._received_at = self._received_at or time.time()

    @property
    def requested(self) -> bool:
        if not self._signalled and self.notice_file is not None and self.notice_file.exists():
            self._signalled = True
            self._received_at = time.time()
        return self._signalled

    @property
    def received_at(self) -> float | None:
        return self._received_at


def install_interruption_handler() -> InterruptionNotice:
    """Catch SIGTERM (instead of dying mid-step) and return the notice object to poll."""
    notice = InterruptionNotice()
    signal.signal(signal.SIGTERM, notice._on_signal)
    return notice


def report_progress(*, step: int | None = None, epoch: int | None = None, **metrics: float) -> None:
    """Record training progress; the agent uploads it and the ledger and task log show it."""
    target = os.environ.get("SPOT_PROGRESS_FILE")
    if not target:
        return
    record = {"step": step, "epoch": epoch, "metrics": metrics, "time": time.time()}
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(record))
