"""The attempt's own log: the job's output and the agent's lines, kept on the VM and copied to the store.

Without it, a preempted attempt's output is gone with its VM. The job's stdout and stderr go through a pipe
that the agent copies line by line to its own stdout (the VM's console, as before) and to a file on the
attempt's disk; the agent's log lines go to the same file. On every sync round and at the end, the file's last
:data:`UPLOAD_BYTES` replace ``.spot/attempts/NNNN/log`` in the store when the file grew.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from airflow_spot_provider.checkpoints.store import CheckpointStore

#: How much of the log the store keeps per attempt (its end: where a failure is).
UPLOAD_BYTES = 1 << 20


class AttemptLog:
    def __init__(self, path: Path, store: CheckpointStore, attempt: int) -> None:
        self.path = path
        self.store = store
        self.attempt = attempt
        self._file: IO[bytes] = open(path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()
        self._uploaded = -1
        self._pump: threading.Thread | None = None
        self._handler = logging.StreamHandler(_LineWriter(self))
        self._handler.setFormatter(logging.Formatter("%(asctime)s [agent] %(message)s"))

    def write(self, data: bytes) -> None:
        with self._lock:
            self._file.write(data)

    def capture_agent(self, logger: logging.Logger) -> None:
        logger.addHandler(self._handler)
        if logger.getEffectiveLevel() > logging.INFO:  # the agent's steps belong in the attempt's log
            logger.setLevel(logging.INFO)

    def popen_output(self) -> dict[str, int]:
        """``subprocess.Popen`` arguments that send the job's output through :meth:`follow`."""
        return {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}

    def follow(self, proc: subprocess.Popen) -> None:
        """Copy the job's output to the console and the file until the job closes it."""
        def pump() -> None:
            console = sys.stdout.buffer
            for line in iter(proc.stdout.readline, b""):
                self.write(line)
                try:
                    console.write(line)
                    console.flush()
                except (OSError, ValueError):  # no console any more: the file still gets everything
                    pass

        self._pump = threading.Thread(target=pump, name="attempt-log", daemon=True)
        self._pump.start()

    def upload(self) -> None:
        """Copy the file's end to the store if it grew since the last upload (errors are the caller's)."""
        size = os.path.getsize(self.path)
        if size == self._uploaded:
            return
        with open(self.path, "rb") as handle:
            handle.seek(max(0, size - UPLOAD_BYTES))
            data = handle.read()
        self.store.write_attempt_log(self.attempt, data)
        self._uploaded = size

    def close(self, logger: logging.Logger) -> None:
        if self._pump is not None:
            self._pump.join(timeout=10)  # the job has exited: its pipe ends
        logger.removeHandler(self._handler)
        self._file.close()


class _LineWriter:
    """What the logging handler writes to: the attempt's log file."""

    def __init__(self, log: AttemptLog) -> None:
        self.log = log

    def write(self, text: str) -> None:
        self.log.write(text.encode(errors="replace"))

    def flush(self) -> None:
        return None
