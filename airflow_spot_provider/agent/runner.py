"""One attempt, start to finish: restore → run the job → sync while it runs → final sync → exit marker."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from airflow_spot_provider.agent.config import AgentConfig
from airflow_spot_provider.agent.notice import notice_source
from airflow_spot_provider.checkpoints.store import CheckpointStore
from airflow_spot_provider.checkpoints.sync import DirectorySync, SyncResult, restore

log = logging.getLogger("airflow_spot_provider.agent")

POLL_SECONDS = 0.2
FINAL_SYNC_TRIES = 4


class AttemptRunner:
    def __init__(self, cfg: AgentConfig, store: CheckpointStore | None = None) -> None:
        self.cfg = cfg
        self.store = store or CheckpointStore.from_uri(cfg.checkpoint_uri)
        self.work_dir = Path(cfg.work_dir)
        self.checkpoint_dir = Path(cfg.checkpoint_dir)
        self.notice_file = self.work_dir / "spot-notice.json"
        self.progress_file = self.work_dir / ".spot-progress.json"
        self.source = notice_source(cfg.notice)
        self.syncer = DirectorySync(self.checkpoint_dir, self.store, cfg.attempt, cfg.checkpoint_pattern)
        self.notice: dict[str, Any] | None = None
        self._sigterm = False
        self._progress_sent: str | None = None

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
        return {
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
        found = self.source.check() or ({"action": "terminate", "source": "SIGTERM"} if self._sigterm else None)
        if not found:
            return
        self.notice = found
        log.info("interruption notice: %s; telling the job (SIGTERM + %s)", found, self.notice_file)
        self.notice_file.write_text(json.dumps(found))
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        self._safely(lambda: self.store.write_marker(self.cfg.attempt, "notice", {"notice": found}), "notice marker")

    def _sync(self, source: str) -> SyncResult | None:
        result = self._safely(lambda: self.syncer.sync(source), "checkpoint sync")
        if result and result.uploaded:
            log.info("synced %d file(s), %d bytes; latest checkpoint %s", len(result.uploaded), result.bytes,
                     result.latest)
        self._send_progress()
        return result

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
            if self._safely(lambda: self.store.write_marker(self.cfg.attempt, "progress", progress), "progress"):
                self._progress_sent = text

    def _safely(self, action, what: str):
        """Storage errors while the job runs are retried next round, never fatal to the job."""
        try:
            return action()
        except Exception as err:  # noqa: BLE001 - any storage fault; the next round retries
            log.warning("%s failed: %s", what, err)
            return None

    def _final_sync(self) -> SyncResult | None:
        for attempt in range(FINAL_SYNC_TRIES):
            result = self._sync("final-sync")
            if result is not None:
                return result
            if attempt + 1 < FINAL_SYNC_TRIES:  # the grace period is short: no sleep after the last try
                time.sleep(min(2**attempt, 8))
        return None

    # -- main ----------------------------------------------------------------------------------
    def run(self) -> int:
        cfg = self.cfg
        signal.signal(signal.SIGTERM, self._on_sigterm)  # GCE soft-off, or the local market
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        resume_from = self._restore()
        self.store.write_marker(cfg.attempt, "started", {
            "instance_id": cfg.instance_id, "restored_from": Path(resume_from).name if resume_from else None})
        argv = self._argv(resume_from)
        log.info("attempt %d on %s: running %s", cfg.attempt, cfg.instance_id, argv)
        proc = subprocess.Popen(argv, cwd=self.work_dir, env=self._job_env(resume_from))
        next_sync = time.monotonic() + cfg.sync_interval
        while proc.poll() is None:
            if self.notice is None:
                self._check_notice(proc)
                if self.notice is not None:
                    next_sync = time.monotonic() + cfg.notice_sync_interval
            if time.monotonic() >= next_sync:
                self._sync("agent")
                interval = cfg.notice_sync_interval if self.notice else cfg.sync_interval
                next_sync = time.monotonic() + interval
            time.sleep(POLL_SECONDS)
        code = proc.returncode
        log.info("job exited with code %s", code)
        final = self._final_sync()
        if final is not None:
            self._safely(lambda: self.store.write_marker(cfg.attempt, "final-sync", {
                **final.to_dict(), "after_notice": self.notice is not None}), "final-sync marker")
        self._safely(lambda: self.store.write_marker(cfg.attempt, "exit", {
            "code": code, "notice": self.notice is not None, "final_sync": final is not None}), "exit marker")
        return code

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self._sigterm = True


def main(config_path: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [agent] %(message)s")
    cfg = AgentConfig.from_json(Path(config_path).read_text())
    runner = AttemptRunner(cfg)
    try:
        return runner.run()
    except Exception as err:
        # Never start the job from scratch because a restore failed: stop and say why.
        log.exception("agent failed")
        error = f"{type(err).__name__}: {err}"
        runner._safely(lambda: runner.store.write_marker(cfg.attempt, "exit", {
            "code": None, "notice": runner.notice is not None, "error": error}), "exit marker")
        return 70
