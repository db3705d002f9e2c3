"""One attempt, start to finish: restore → run the job → sync while it runs → final sync → exit marker.

Storage calls are retried inside :class:`CheckpointStore`. What the exit marker adds for the operator:
``sync_error`` when the final sync failed (then there is no ``final-sync`` marker, so backup-save runs),
and ``fenced`` when a newer attempt took over the store (this attempt stopped its job and synced no more).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from airflow_spot_provider.agent.attempt_log import AttemptLog
from airflow_spot_provider.agent.config import AgentConfig
from airflow_spot_provider.agent.notice import notice_source
from airflow_spot_provider.attempt import Marker, exit_marker, notice_marker, rehearsal_notice, started_marker
from airflow_spot_provider.checkpoints.store import CheckpointStore, FencedError
from airflow_spot_provider.checkpoints.sync import DirectorySync, SyncResult, restore

log = logging.getLogger("airflow_spot_provider.agent")

POLL_SECONDS = 0.2
#: After a fence stops the job with SIGTERM, seconds before it is killed.
FENCE_GRACE_SECONDS = 10.0
#: The agent's exit code when a newer attempt fenced it off (EX_TEMPFAIL).
FENCED_EXIT = 75
#: The agent's exit code when it stopped on an error of its own (EX_SOFTWARE): its ``exit`` marker has ``error``.
AGENT_ERROR_EXIT = 70
#: Seconds between looks for a rehearsal marker in the store (one small read each).
REHEARSAL_CHECK_SECONDS = 5.0
#: The attempt's output on its disk (hidden: never taken for a checkpoint), copied to the store as it grows.
OUTPUT_FILE = ".spot-attempt.log"


class StartNotRecorded(RuntimeError):
    """The ``started`` marker could not be written after its retries: the job is not started."""


class AttemptRunner:
    def __init__(self, cfg: AgentConfig, store: CheckpointStore | None = None, *,
                 fence_grace: float = FENCE_GRACE_SECONDS) -> None:
        self.cfg = cfg
        self.fence_grace = fence_grace
        self.store = store or CheckpointStore.from_uri(cfg.checkpoint_uri)
        self.work_dir = Path(cfg.work_dir)
        self.checkpoint_dir = Path(cfg.checkpoint_dir)
        self.notice_file = self.work_dir / "spot-notice.json"
        self.progress_file = self.work_dir / ".spot-progress.json"
        self.source = notice_source(cfg.notice)
        self.syncer = DirectorySync(self.checkpoint_dir, self.store, cfg.attempt, cfg.checkpoint_pattern)
        self.notice: dict[str, Any] | None = None
        #: The attempt that fenced this one off; once set, nothing is synced any more.
        self.fenced: int | None = None
        #: The last sync failure ("Type: message"), cleared by a successful sync.
        self.sync_error: str | None = None
        self._proc: subprocess.Popen | None = None
        self._kill_at: float | None = None
        self._sigterm = False
        self._progress_sent: str | None = None
        self.output: AttemptLog | None = None
        #: When a rehearsed preemption ends the job if it has not exited by then (monotonic seconds).
        self._rehearsal_deadline: float | None = None
        self._next_rehearsal_check = 0.0

    # -- steps ---------------------------------------------------------------------------------
    def _restore(self) -> str:
        result = restore(self.store, self.checkpoint_dir, self.cfg.checkpoint_pattern)
        if result.resume_from:
            log.info("restored %s (%d files, %d bytes) from %s", result.resume_from, len(result.files),
                     result.bytes, self.cfg.checkpoint_uri)
            return str(self.checkpoint_dir / result.resume_from)
        log.info("no checkpoint in %s: starting fresh", self.cfg.checkpoint_uri)
        return ""

    def _job_env(self, resume_from: str) -> dict[str, str]:
        # The VM's own environment (PATH, HOME, locale; the local backend already filtered it), then the job's.
        return {
            **os.environ,
            **self.cfg.env,
            "SPOT_CHECKPOINT_DIR": str(self.checkpoint_dir),
            "SPOT_RESUME_FROM": resume_from,
            "SPOT_ATTEMPT": str(self.cfg.attempt),
            "SPOT_NOTICE_FILE": str(self.notice_file),
            "SPOT_PROGRESS_FILE": str(self.progress_file),
        }

    def _argv(self, resume_from: str) -> list[str]:
        extra = [arg.format(resume_from=resume_from) for arg in self.cfg.resume_args] if resume_from else []
        return [*self.cfg.command, *extra]

    def _check_notice(self, proc: subprocess.Popen) -> None:
        try:
            found = self.source.check()
        except (OSError, ValueError) as err:  # a metadata server hiccup is not a notice; ask again next round
            log.warning("interruption notice check failed: %s", err)
            found = None
        found = found or ({"action": "terminate", "source": "SIGTERM"} if self._sigterm else None)
        found = found or self._rehearsal()
        if not found:
            return
        self.notice = found
        log.info("interruption notice: %s; telling the job (SIGTERM + %s)", found, self.notice_file)
        self.notice_file.write_text(json.dumps(found))
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        self._safely(lambda: self.store.write_marker(self.cfg.attempt, Marker.NOTICE, notice_marker(found)),
                     "notice marker")

    def _rehearsal(self) -> dict[str, Any] | None:
        """A rehearsed preemption asked for through the store (``airflow-spot rehearse`` or the UI's button)."""
        if time.monotonic() < self._next_rehearsal_check:
            return None
        self._next_rehearsal_check = time.monotonic() + REHEARSAL_CHECK_SECONDS
        rehearsal = self._safely(lambda: self.store.read_marker(self.cfg.attempt, Marker.REHEARSAL), "rehearsal check")
        if not rehearsal:
            return None
        notice = rehearsal_notice(rehearsal)
        # The cloud would take the VM at the end of its notice; a rehearsal ends the job itself then.
        self._rehearsal_deadline = time.monotonic() + notice["grace"]
        return notice

    def _sync(self, source: str) -> SyncResult | None:
        if self.fenced is not None:
            return None
        try:
            result = self.syncer.sync(source)
        except FencedError as err:
            self._on_fenced(err.fence)
            return None
        except Exception as err:  # noqa: BLE001 - any storage fault: the next round (or backup-save) retries
            self.sync_error = f"{type(err).__name__}: {err}"
            log.warning("checkpoint sync failed: %s", self.sync_error)
            return None
        self.sync_error = None
        if result.uploaded:
            log.info("synced %d file(s), %d bytes; latest checkpoint %s", len(result.uploaded), result.bytes,
                     result.latest)
        self._send_progress()
        return result

    def _on_fenced(self, fence: int) -> None:
        """A newer attempt owns the store: stop syncing for good and stop the job (it would only waste)."""
        self.fenced = fence
        log.warning("fenced by attempt %d: a newer attempt owns %s; no more syncs, stopping the job",
                    fence, self.cfg.checkpoint_uri)
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            self._kill_at = time.monotonic() + self.fence_grace

    def _send_progress(self) -> None:
        try:
            text = self.progress_file.read_text()
        except FileNotFoundError:
            return
        if text != self._progress_sent:
            try:
                progress = json.loads(text)
            except ValueError:
                return
            write = lambda: self.store.write_marker(self.cfg.attempt, Marker.PROGRESS, progress)  # noqa: E731
            if self._safely(write, "progress marker"):
                self._progress_sent = text

    def _safely(self, action, what: str):
        """Storage errors while the job runs are retried next round, never fatal to the job."""
        try:
            return action()
        except Exception as err:  # noqa: BLE001 - any storage fault; the next round retries
            log.warning("%s failed: %s", what, err)
            return None

    def _upload_output(self) -> None:
        if self.output is not None and self.fenced is None:
            self._safely(self.output.upload, "attempt log upload")

    def _final_sync(self) -> SyncResult | None:
        """One last round after the job exited; the store retries transient errors inside it."""
        return self._sync(Marker.FINAL_SYNC.value)

    def _wait_for_job(self, proc: subprocess.Popen) -> int:
        cfg = self.cfg
        next_sync = time.monotonic() + cfg.sync_interval
        while proc.poll() is None:
            if self.fenced is not None:
                if self._kill_at is not None and time.monotonic() >= self._kill_at:
                    proc.kill()  # it ignored SIGTERM; a stale attempt must not keep running
                time.sleep(POLL_SECONDS)
                continue
            if self.notice is None:
                self._check_notice(proc)
                if self.notice is not None:
                    next_sync = time.monotonic() + cfg.notice_sync_interval
            elif self._rehearsal_deadline is not None and time.monotonic() >= self._rehearsal_deadline:
                log.info("rehearsal: the job did not exit within its grace; killing it as the cloud would")
                proc.kill()
                self._rehearsal_deadline = None
            if time.monotonic() >= next_sync:
                self._sync("agent")
                self._upload_output()
                interval = cfg.notice_sync_interval if self.notice else cfg.sync_interval
                next_sync = time.monotonic() + interval
            time.sleep(POLL_SECONDS)
        if self.notice is None and self.fenced is None:
            # The job may exit on the same signal that carries the notice (GCE's soft-off reaches every
            # process at once): look once more, so a preemption always leaves its notice marker.
            self._check_notice(proc)
        return proc.returncode

    def _write_exit(self, code: int | None, final_sync: bool) -> None:
        data = exit_marker(code, noticed=self.notice is not None, final_sync=final_sync, fenced=self.fenced,
                           sync_error=self.sync_error if self.fenced is None and not final_sync else None)
        self._safely(lambda: self.store.write_marker(self.cfg.attempt, Marker.EXIT, data), "exit marker")

    def _write_started(self, resume_from: str) -> None:
        """The ``started`` marker, retried by the store; if it still fails, the job is not started.

        Without it, a VM that later powers itself off with no ``exit`` marker (the store still failing) is
        classified as a broken boot and fails the task, though its job ran: a lost attempt that should have
        been relaunched. Stopping now costs nothing, since nothing has run yet (like a failed restore).
        """
        try:
            self.store.write_marker(self.cfg.attempt, Marker.STARTED, started_marker(
                self.cfg.instance_id, Path(resume_from).name if resume_from else None))
        except Exception as err:
            raise StartNotRecorded(f"the started marker could not be written, so the job was not started: "
                                   f"{type(err).__name__}: {err}") from err

    def _fenced_at_start(self) -> bool:
        try:
            self.syncer.check_fence()
        except FencedError as err:
            self._on_fenced(err.fence)
            return True
        return False

    # -- main ----------------------------------------------------------------------------------
    def run(self) -> int:
        cfg = self.cfg
        signal.signal(signal.SIGTERM, self._on_sigterm)  # GCE soft-off, or the local market
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.output = AttemptLog(self.work_dir / OUTPUT_FILE, self.store, cfg.attempt)
        self.output.capture_agent(log)
        if self._fenced_at_start():  # launched after a newer attempt took over: do not run at all
            self._write_exit(None, final_sync=False)
            return FENCED_EXIT
        resume_from = self._restore()
        self._write_started(resume_from)
        argv = self._argv(resume_from)
        log.info("attempt %d on %s: running %s", cfg.attempt, cfg.instance_id, argv)
        self._proc = proc = subprocess.Popen(argv, cwd=self.work_dir, env=self._job_env(resume_from),
                                             **self.output.popen_output())
        self.output.follow(proc)
        code = self._wait_for_job(proc)
        log.info("job exited with code %s", code)
        self.output.close(log)
        self._upload_output()
        final = self._final_sync()
        written = False
        if final is not None:
            written = self._safely(lambda: self.store.write_marker(cfg.attempt, Marker.FINAL_SYNC, {
                **final.to_dict(), "after_notice": self.notice is not None}), "final-sync marker") is not None
        elif self.sync_error:
            log.error("final sync failed: %s; the checkpoint directory is left for backup-save", self.sync_error)
        self._write_exit(code, final_sync=written)
        return FENCED_EXIT if self.fenced is not None else code

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self._sigterm = True


def main(config_path: str, store: CheckpointStore | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [agent] %(message)s")
    cfg = AgentConfig.from_json(Path(config_path).read_text())
    runner = AttemptRunner(cfg, store)
    try:
        return runner.run()
    except Exception as err:
        # Never start the job from scratch because a restore failed: stop and say why.
        log.exception("agent failed")
        runner._upload_output()  # the traceback is in it
        error = f"{type(err).__name__}: {err}"
        runner._safely(lambda: runner.store.write_marker(
            cfg.attempt, Marker.EXIT, exit_marker(None, noticed=runner.notice is not None, error=error)), "exit marker")
        return AGENT_ERROR_EXIT
