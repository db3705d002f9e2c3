"""SpotTrainingOperator: a training job on spot VMs that always finishes, as one Airflow task.

Launch an attempt → defer to :class:`SpotJobTrigger` (no worker slot while it runs) → on its event:

- ``succeeded``: return the ledger summary (XCom);
- ``failed`` (non-zero exit, no interruption notice): raise, so a normal Airflow retry happens,
  and that retry resumes from the latest checkpoint;
- ``preempted`` / ``lost``: backup-save the dead VM's disk, relaunch from the latest checkpoint and
  defer again — in the same try, so preemptions never consume ``retries`` (bounded by
  ``max_preemptions``).

No capacity for a placement (type × zone) → the next one; after a full round, a timer deferral with
backoff (decision 8). A backup-save that runs on a helper VM is waited for by a trigger too.

Every step is recorded in the ledger (``task_state_store``) before it is taken, so a restarted worker
or a new try picks up where the last one stopped: reconnects to a live attempt, waits for a running
backup-save, finishes a cleanup — instead of launching a second VM.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, TaskDeferralTimeout

from airflow_spot_provider.backends import get_backend
from airflow_spot_provider.backends.base import (
    BackupSaveResult,
    InstanceFacts,
    JobIdentity,
    LaunchError,
    LaunchRequest,
    SpotBackend,
)
from airflow_spot_provider.checkpoints.latest import latest_name, top_level
from airflow_spot_provider.checkpoints.objectstorage import store_for
from airflow_spot_provider.checkpoints.retention import apply_retention
from airflow_spot_provider.checkpoints.store import CheckpointStore
from airflow_spot_provider.ledger import AttemptRecord, Ledger, LedgerMirror, format_attempt, format_totals
from airflow_spot_provider.links.spot import SpotAttemptLink, SpotCheckpointLink, checkpoint_console_url
from airflow_spot_provider.spec import DEFAULT_CHECKPOINT_PATTERN, JobSpec, SpotSpecError, machine_from, number
from airflow_spot_provider.triggers.backup_save import BackupSaveTrigger
from airflow_spot_provider.triggers.base import DESCRIBE_ERROR, DESCRIBE_FAILURE_TIMEOUT
from airflow_spot_provider.triggers.spot_job import SpotJobTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

CONSOLE_TAIL = 15
#: Longest timer deferral while waiting for capacity.
MAX_CAPACITY_DELAY = 600.0


class SpotTrainingOperator(BaseOperator):
    """Run ``command`` on a spot VM until it exits 0, surviving preemptions.

    :param command: the training command as an argument list (never a shell string). Templated.
    :param checkpoint_uri: where checkpoints are kept (``file://`` local, ``s3://`` aws, ``gs://`` gcp). Templated.
    :param backend: ``"local"`` (default), ``"aws"`` or ``"gcp"``.
    :param machine: instance types, zones, market (spot / on-demand), on-demand fallback: see ``MachineSpec``.
    :param resume_args: appended to ``command`` only when a checkpoint was restored; ``{resume_from}`` is
        replaced by its path (the reentrant ``--from-checkpoint`` style). Templated.
    :param max_preemptions: preemptions (and lost VMs) tolerated in one try before the task fails.
    :param checkpoint_pattern: regex with a ``step`` group picking the latest checkpoint by number.
    :param keep_checkpoints: after each attempt, keep only the newest N checkpoints in the store (plus the
        newest intact one, if they are corrupt) and remove fenced attempts' staging leftovers; None (default)
        keeps everything.
    :param sync_interval: seconds between checkpoint syncs from the VM.
    :param poll_interval: seconds between status polls in the triggerer.
    :param env: extra environment variables for the job. Templated.
    :param pass_env: names of worker environment variables to pass to the job (none are by default).
    :param backend_options: backend settings (local: ``state_dir``, ``preempt_after``…; aws: ``region_name``,
        ``subnet_ids``…; gcp: ``project_id``…): see the backend pages.
    :param conn_id: Airflow connection for the checkpoint store and the cloud API (None for local).
    :param job_timeout: seconds (or a timedelta) one try may take, all attempts and capacity waits included;
        when it passes, the attempt's VM and disk are removed and the task fails (a retry resumes).
    :param cancel_on_kill: when the deferred task is marked failed/success or cleared, terminate its VM
        and release its disk (default). Off: the VM keeps running (the sweep finds it later).
    :param capacity_retry_delay: first wait, in seconds, after every placement refused for capacity; it doubles
        with each round, up to 10 minutes.
    :param describe_failure_timeout: seconds the cloud may fail to describe the watched VM in a row (revoked
        credentials, a wrong region) before the try fails with its error; the attempt is kept for the retry.
    """

    template_fields: Sequence[str] = ("command", "checkpoint_uri", "resume_args", "env")
    ui_color = "#f5d76e"
    operator_extra_links = (SpotAttemptLink(), SpotCheckpointLink())

    def __init__(
        self,
        *,
        command: Sequence[str],
        checkpoint_uri: str,
        backend: str = "local",
        machine: dict[str, Any] | None = None,
        resume_args: Sequence[str] | None = None,
        max_preemptions: int = 10,
        checkpoint_pattern: str = DEFAULT_CHECKPOINT_PATTERN,
        keep_checkpoints: int | None = None,
        sync_interval: float = 30.0,
        poll_interval: float = 10.0,
        env: dict[str, str] | None = None,
        pass_env: Sequence[str] | None = None,
        backend_options: dict[str, Any] | None = None,
        conn_id: str | None = None,
        job_timeout: timedelta | float | None = None,
        cancel_on_kill: bool = True,
        capacity_retry_delay: float = 30.0,
        describe_failure_timeout: float = DESCRIBE_FAILURE_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Validate everything now, at DAG parse time, never after a VM is launched.
        self.spec = JobSpec(
            command=command, checkpoint_uri=checkpoint_uri, backend=backend, resume_args=resume_args or (),
            env=env or {}, pass_env=pass_env or (), checkpoint_pattern=checkpoint_pattern,
            sync_interval=sync_interval, poll_interval=poll_interval, max_preemptions=max_preemptions,
            keep_checkpoints=keep_checkpoints, machine=machine_from(machine),
        )
        if backend_options is not None and not isinstance(backend_options, dict):
            raise SpotSpecError(f"backend_options: must be a dict, got {type(backend_options).__name__}")
        if isinstance(job_timeout, timedelta):
            job_timeout = job_timeout.total_seconds()
        self.job_timeout = number("job_timeout", job_timeout, allow_none=True, exclusive=True)
        self.capacity_retry_delay = number("capacity_retry_delay", capacity_retry_delay, exclusive=True)
        self.describe_failure_timeout = number("describe_failure_timeout", describe_failure_timeout, exclusive=True)
        if not isinstance(cancel_on_kill, bool):
            raise SpotSpecError(f"cancel_on_kill: must be True or False, got {cancel_on_kill!r}")
        self.cancel_on_kill = cancel_on_kill
        self.backend_options = dict(backend_options or {})
        self.backend = backend
        self.conn_id = conn_id
        try:
            self._backend().validate_machine(self.spec.machine)
        except (ValueError, NotImplementedError) as err:
            raise SpotSpecError(str(err)) from err
        self.command = list(self.spec.command)
        self.checkpoint_uri = checkpoint_uri
        self.resume_args = list(self.spec.resume_args)
        self.env = dict(self.spec.env)

    # -- pieces derived from the rendered task -------------------------------------------------
    def _spec(self) -> JobSpec:
        return self.spec.rendered(command=self.command, checkpoint_uri=self.checkpoint_uri,
                                  resume_args=self.resume_args, env=self.env)

    def _backend(self) -> SpotBackend:
        return get_backend(self.backend, self.backend_options, conn_id=self.conn_id)

    def _store(self, spec: JobSpec) -> CheckpointStore:
        return store_for(spec.checkpoint_uri, self.conn_id)

    def _ledger(self, context: Context) -> Ledger:
        ti = context["ti"]
        map_index = ti.map_index if ti.map_index is not None else -1
        mirror = LedgerMirror(self._store(self._spec()), ti.dag_id, ti.run_id, ti.task_id, map_index)
        ledger = Ledger(context["task_state_store"], mirror)
        self._show_links(ledger.current)  # every run reads the ledger first: its links start from it
        return ledger

    @staticmethod
    def _identity(context: Context, ledger: Ledger) -> JobIdentity:
        ti = context["ti"]
        map_index = ti.map_index if ti.map_index is not None else -1
        return JobIdentity(ti.dag_id, ti.run_id, ti.task_id, map_index, ledger.job.nonce)

    def _request(self, spec: JobSpec, identity: JobIdentity, record: AttemptRecord) -> LaunchRequest:
        machine = spec.machine
        placements = machine.placements()
        instance_type, zone = placements[record.placement % len(placements)]
        job_env = {name: os.environ[name] for name in spec.pass_env if name in os.environ}
        return LaunchRequest(
            identity=identity, attempt=record.attempt, command=list(spec.command),
            resume_args=list(spec.resume_args), env={**job_env, **spec.env}, checkpoint_uri=spec.checkpoint_uri,
            checkpoint_pattern=spec.checkpoint_pattern, sync_interval=spec.sync_interval,
            instance_type=instance_type, zone=zone, market=record.market, launch_try=len(record.launch_errors),
            image=machine.image, disk_gb=machine.disk_gb, max_price_per_hour=machine.max_price_per_hour,
        )

    def _deadline(self, context: Context, ledger: Ledger) -> float | None:
        return ledger.deadline(context["ti"].try_number, self.job_timeout)

    # -- entry: a new try, or a restarted worker -----------------------------------------------
    def execute(self, context: Context) -> Any:
        ledger = self._ledger(context)
        self._deadline(context, ledger)
        if (done := ledger.unreturned_success) is not None:
            # The job succeeded but the worker died before Airflow heard of it: this is the automatic retry.
            # Return the recorded result; only a user's clear after a returned success trains again.
            self.log.info("Attempt %d already succeeded; returning its recorded result instead of training again",
                          done.attempt)
            return self._decide(context, ledger, done, self._spec())
        current = ledger.current
        if current is not None and current.active:
            self.log.info("Reconnecting to attempt %d (%s) instead of launching a new VM",
                          current.attempt, current.instance_id or "launch in progress")
            return self._watch(context, ledger, current)
        if current is not None and current.instance_id and not current.released:
            self.log.info("Attempt %d ended (%s) but its cleanup did not finish: finishing it first",
                          current.attempt, current.status)
            return self._cleanup(context, ledger, current)
        return self._launch_next(context, ledger)

    # -- launching -----------------------------------------------------------------------------
    def _launch_next(self, context: Context, ledger: Ledger) -> Any:
        spec = self._spec()
        identity = self._identity(context, ledger)
        try_number = context["ti"].try_number
        record = ledger.new_attempt(try_number, self.backend, identity.token, after=self._store(spec).last_attempt())
        record.market = spec.machine.market_for(ledger.preemptions_in_try(try_number))
        ledger.save(record)
        return self._launch(context, ledger, record)

    def _launch(self, context: Context, ledger: Ledger, record: AttemptRecord) -> Any:
        """Try placements in order until one has capacity; after a full round, wait on a timer."""
        spec = self._spec()
        identity = self._identity(context, ledger)
        backend = self._backend()
        # Older attempts may still be alive somewhere (a VM wrongly believed dead): from now on the store
        # refuses their writes. The previous attempt's backup-save is already done (it runs before this).
        self._store(spec).raise_fence(record.attempt)
        placements = len(spec.machine.placements())
        while True:
            request = self._request(spec, identity, record)
            try:
                facts = backend.launch(request)
            except LaunchError as err:
                record.launch_errors.append({
                    "code": err.code, "message": str(err), "instance_type": request.instance_type,
                    "zone": request.zone, "market": request.market, "time": time.time(),
                })
                self.log.warning("No launch of attempt %d on %s in %s: %s", record.attempt,
                                 request.instance_type or "default type", request.zone or "default zone", err)
                if err.move_on:
                    record.placement += 1
                if not err.move_on or record.placement % placements == 0:
                    return self._wait_for_capacity(context, ledger, record)
                ledger.save(record)
                continue
            self._record_facts(record, facts, status="running")
            ledger.save(record)
            self.log.info("Launched %s", format_attempt(record))
            return self._defer_watch(context, ledger, record, spec)

    def _wait_for_capacity(self, context: Context, ledger: Ledger, record: AttemptRecord) -> Any:
        from airflow.providers.standard.triggers.temporal import DateTimeTrigger

        delay = min(MAX_CAPACITY_DELAY, self.capacity_retry_delay * 2 ** record.capacity_waits)
        deadline = self._deadline(context, ledger)
        late = deadline is not None and time.time() + delay > deadline
        if late and record.market == "spot" and self.spec.machine.on_demand_if_late:
            self.log.warning("Waiting %.0fs more for spot capacity would miss job_timeout: attempt %d goes on-demand",
                             delay, record.attempt)
            record.market, record.placement = "on-demand", 0
            ledger.save(record)
            return self._launch(context, ledger, record)
        if late:
            record.status, record.reason = "cancelled", "no capacity before job_timeout"
            ledger.save(record)
            raise AirflowException(
                f"attempt {record.attempt}: no capacity in any placement before job_timeout; launch errors: "
                + "; ".join(e["message"] for e in record.launch_errors[-3:]))
        record.capacity_waits += 1
        ledger.save(record)
        self.log.info("Waiting %.0fs for capacity (no worker slot is held), then trying again", delay)
        self.defer(trigger=DateTimeTrigger(moment=datetime.now(timezone.utc) + timedelta(seconds=delay)),
                   method_name="retry_launch", timeout=self._timeout(context, ledger))

    def retry_launch(self, context: Context, event: Any = None) -> Any:
        ledger = self._ledger(context)
        current = ledger.current
        if current is None or current.status != "launching":
            return self.execute(context)
        return self._launch(context, ledger, current)

    # -- watching ------------------------------------------------------------------------------
    def _watch(self, context: Context, ledger: Ledger, record: AttemptRecord) -> Any:
        """Reconnect to a recorded attempt: find its VM by token; launch it only if it never started."""
        spec = self._spec()
        facts = self._backend().find(self._request(spec, self._identity(context, ledger), record))
        if facts is None and record.status == "launching":
            return self._launch(context, ledger, record)  # idempotent by token: never a second VM
        if facts is not None:
            self._record_facts(record, facts, status="running")
            ledger.save(record)
        elif record.instance_id is None:
            raise AirflowException(f"attempt {record.attempt} was recorded as running but has no instance")
        return self._defer_watch(context, ledger, record, spec)

    def _timeout(self, context: Context, ledger: Ledger) -> timedelta | None:
        deadline = self._deadline(context, ledger)
        return None if deadline is None else timedelta(seconds=max(1.0, deadline - time.time()))

    def _trigger_args(self, record: AttemptRecord, spec: JobSpec, instance_id: str) -> dict[str, Any]:
        return {
            "backend": self._backend().serialize(), "instance_id": instance_id, "attempt": record.attempt,
            "checkpoint_uri": spec.checkpoint_uri, "conn_id": self.conn_id, "poll_interval": spec.poll_interval,
            "cancel_on_kill": self.cancel_on_kill, "describe_failure_timeout": self.describe_failure_timeout,
        }

    def _show_links(self, record: AttemptRecord | None) -> None:
        """What the task's extra links show once this run ends (the Task SDK stores them in XCom then).

        Set on every run, "" when there is no URL: whatever a run leaves is what the links show.
        """
        try:
            instance_id = record.instance_id if record is not None else None
            SpotAttemptLink.show(self, self._backend().console_url(instance_id) if instance_id else None)
            SpotCheckpointLink.show(self, checkpoint_console_url(self._spec().checkpoint_uri))
        except Exception as err:  # noqa: BLE001 - a link is a courtesy: it never fails the run
            self.log.warning("The task's extra links are not set: %s", err)

    def _defer_watch(self, context: Context, ledger: Ledger, record: AttemptRecord, spec: JobSpec) -> None:
        self._show_links(record)
        self.defer(trigger=SpotJobTrigger(**self._trigger_args(record, spec, record.instance_id)),
                   method_name="execute_complete", timeout=self._timeout(context, ledger))

    @staticmethod
    def _record_facts(record: AttemptRecord, facts: InstanceFacts, status: str | None = None) -> None:
        record.instance_id = facts.instance_id
        record.zone = facts.zone or record.zone
        record.instance_type = facts.instance_type or record.instance_type
        record.market = facts.market or record.market
        record.launched_at = facts.launched_at or record.launched_at
        record.price_per_hour = facts.price_per_hour if facts.price_per_hour is not None else record.price_per_hour
        if facts.on_demand_price_per_hour is not None:
            record.on_demand_price_per_hour = facts.on_demand_price_per_hour
        record.ended_at = facts.ended_at or record.ended_at
        if status:
            record.status = status

    # -- an attempt ended ----------------------------------------------------------------------
    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        ledger = self._ledger(context)
        record = ledger.attempt(int(event["attempt"]))
        current = ledger.current
        if record is None or current is None or record.attempt != current.attempt or not record.active:
            # A duplicate or stale event (e.g. a trigger that ran twice): the ledger decides what is live.
            self.log.info("Ignoring event for attempt %s: the ledger's current attempt is %s",
                          event.get("attempt"), current.attempt if current else None)
            return self.execute(context)
        if event["status"] == DESCRIBE_ERROR:
            raise self._describe_error(record, event)
        self._record_event(record, event)
        ledger.save(record)
        self.log.info("%s", format_attempt(record))
        return self._cleanup(context, ledger, record)

    @staticmethod
    def _describe_error(record: AttemptRecord, event: dict[str, Any]) -> AirflowException:
        # Nothing is recorded, terminated or released: the VM may well be fine, only the cloud API refused
        # us. The ledger still holds the attempt (or its backup-save helper), so the next try picks it up.
        return AirflowException(
            f"attempt {record.attempt}: the cloud could not describe {event.get('instance_id')} for "
            f"{event.get('failing_seconds')}s: {event.get('reason')}. Nothing was terminated; "
            "a retry reconnects to it.")

    def _record_event(self, record: AttemptRecord, event: dict[str, Any]) -> None:
        facts = InstanceFacts.from_dict(event["facts"])
        markers = event.get("markers") or {}
        self._record_facts(record, facts)
        record.status = event["status"]
        record.reason = event.get("reason") or ""
        record.exit_code = event.get("exit_code")
        record.final_synced = "final-sync" in markers
        record.sync_error = (markers.get("exit") or {}).get("sync_error")
        if record.sync_error:
            self.log.warning("Attempt %d could not publish its last checkpoints (%s): backup-save reads its disk",
                             record.attempt, record.sync_error)
        record.started_at = (markers.get("started") or {}).get("time", record.started_at)
        record.restored_from = (markers.get("started") or {}).get("restored_from", record.restored_from)
        record.notice_at = (markers.get("notice") or {}).get("time", record.notice_at)
        record.progress = markers.get("progress") or record.progress
        record.ended_at = record.ended_at or (markers.get("exit") or {}).get("time") or event.get("observed_at")

    def _cleanup(self, context: Context, ledger: Ledger, record: AttemptRecord) -> Any:
        """Make sure the VM is gone, save what its disk holds, release the disk; then decide."""
        spec = self._spec()
        backend = self._backend()
        backend.terminate(record.instance_id)  # the VM must be dead before its disk is read
        if record.backup_helper:
            return self._defer_backup_save(context, ledger, record, spec)
        if record.backup_save is None:
            if record.final_synced:
                # Written by the agent after the job exited: nothing on the disk is newer.
                record.backup_save = {"skipped": True, "reason": "final sync after the job exited"}
                self.log.info("Backup-save of attempt %d skipped: the agent synced after the job exited",
                              record.attempt)
            else:
                result = backend.backup_save(record.instance_id, self._store(spec), record.attempt,
                                             spec.checkpoint_pattern, token=record.token)
                if result.helper_id:
                    record.backup_helper = result.helper_id
                    ledger.save(record)
                    self.log.info("Backup-save of attempt %d runs on helper %s", record.attempt, result.helper_id)
                    return self._defer_backup_save(context, ledger, record, spec)
                self._record_backup_save(record, result)
            ledger.save(record)
        return self._release(context, ledger, record, spec)

    def _defer_backup_save(self, context: Context, ledger: Ledger, record: AttemptRecord, spec: JobSpec) -> None:
        self.defer(trigger=BackupSaveTrigger(**self._trigger_args(record, spec, record.backup_helper)),
                   method_name="backup_save_complete", timeout=self._timeout(context, ledger))

    def backup_save_complete(self, context: Context, event: dict[str, Any]) -> Any:
        ledger = self._ledger(context)
        record = ledger.current
        if record is None or record.backup_helper != event.get("instance_id"):
            self.log.info("Ignoring a backup-save event for %s: no such helper in the ledger", event.get("instance_id"))
            return self.execute(context)
        if event.get("status") == DESCRIBE_ERROR:
            raise self._describe_error(record, event)
        result = self._backend().finish_backup_save(record.instance_id, record.backup_helper, event.get("marker"))
        if result.error is None and event.get("status") != "done":
            result.error = event.get("reason") or "the backup-save helper ended without a result"
        record.backup_helper = None
        self._record_backup_save(record, result)
        ledger.save(record)
        return self._release(context, ledger, record, self._spec())

    def _record_backup_save(self, record: AttemptRecord, result: BackupSaveResult) -> None:
        record.backup_save = result.to_dict()
        if result.error:
            self.log.error("Backup-save of attempt %d failed: %s", record.attempt, result.error)
        elif not result.skipped:
            self.log.info("Backup-save of attempt %d: recovered %d file(s), %d bytes from the dead VM's disk; "
                          "latest checkpoint %s", record.attempt, len(result.uploaded), result.bytes, result.latest)

    def _release(self, context: Context, ledger: Ledger, record: AttemptRecord, spec: JobSpec) -> Any:
        if record.backup_save and record.backup_save.get("error"):
            # Keep the disk: it holds the only copy of what the job wrote last. A retry saves it again.
            record.backup_save_errors = [*record.backup_save_errors, record.backup_save["error"]]
            record.backup_save = None
            ledger.save(record)
            raise AirflowException(
                f"attempt {record.attempt}: backup-save failed; its disk is kept and a retry saves it again")
        self._backend().release(record.instance_id, token=record.token)
        record.released = True
        self._record_checkpoint(record, self._store(spec), spec.checkpoint_pattern)
        ledger.save(record)
        if spec.keep_checkpoints is not None:
            # Now nothing may write: this attempt's VM is gone, older ones are fenced, the next is not launched.
            try:
                kept = apply_retention(self._store(spec), spec.checkpoint_pattern, spec.keep_checkpoints)
                self.log.info("Checkpoint retention: %s", kept.describe())
            except Exception as err:  # noqa: BLE001 - housekeeping never fails the job; the next release retries
                self.log.warning("Checkpoint retention failed (the next attempt's release tries again): %s", err)
        return self._decide(context, ledger, record, spec)

    def _decide(self, context: Context, ledger: Ledger, record: AttemptRecord, spec: JobSpec) -> Any:
        status = record.status
        if status == "succeeded":
            ledger.returning(record)
            self.log.info("Job finished: %s", format_totals(ledger.totals()))
            return {**ledger.summary(), "checkpoint_uri": spec.checkpoint_uri}
        self._log_console(record)
        self.log.info("Ledger so far: %s", format_totals(ledger.totals()))
        this_try = context["ti"].try_number
        if status == "failed" and record.try_number == this_try:
            raise AirflowException(
                f"attempt {record.attempt}: the training command failed ({record.reason}) on {record.instance_id}. "
                f"Latest checkpoint: {record.last_checkpoint or 'none'}; a retry resumes from it."
            )
        used = ledger.preemptions_in_try(this_try)
        if used > spec.max_preemptions:
            raise AirflowException(
                f"giving up: {used} preemptions/lost VMs in try {this_try} exceed max_preemptions="
                f"{spec.max_preemptions}. Latest checkpoint: {record.last_checkpoint or 'none'}; "
                "a retry resumes from it."
            )
        self.log.info("Relaunching from %s (%d of %d preemptions used in this try)",
                      record.last_checkpoint or "scratch", used, spec.max_preemptions)
        return self._launch_next(context, ledger)

    @staticmethod
    def _record_checkpoint(record: AttemptRecord, store: CheckpointStore, pattern: str) -> None:
        manifest = store.read_manifest()
        record.last_checkpoint = latest_name({top_level(p) for p in manifest.files}, pattern)
        mine = [e.get("mtime") or e.get("time") for e in manifest.files.values() if e.get("attempt") == record.attempt]
        record.last_checkpoint_at = max(mine) if mine else None

    def _log_console(self, record: AttemptRecord) -> None:
        lines = self._backend().console_output(record.instance_id, CONSOLE_TAIL)
        if lines:
            self.log.info("Last output of attempt %d:\n  %s", record.attempt, "\n  ".join(lines))

    # -- the deferral timed out (job_timeout) ----------------------------------------------------
    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except TaskDeferralTimeout:
            self._abandon(context, f"job_timeout of {self.job_timeout:g}s exceeded")
            raise

    def _abandon(self, context: Context, reason: str) -> None:
        """Remove the current attempt's VM, helper and disk: the task is about to fail."""
        ledger = self._ledger(context)
        record = ledger.current
        if record is None or record.released:
            return
        backend = self._backend()
        for instance_id in filter(None, (record.backup_helper, record.instance_id)):
            backend.terminate(instance_id)
        if record.instance_id and not record.backup_helper:
            backend.release(record.instance_id, token=record.token)
        elif record.backup_helper:
            # Its backup-save did not finish: keep the disk (the only copy of the newest files); the sweep
            # removes it once the job is no longer live.
            self.log.warning("Attempt %d's disk is kept: its backup-save was cut short", record.attempt)
        if record.active:
            record.status, record.reason = "cancelled", reason
        record.released = not record.backup_helper
        record.backup_helper = None
        record.ended_at = record.ended_at or time.time()
        ledger.save(record)
        self.log.warning("Attempt %d cancelled (%s): its VM and disk are removed", record.attempt, reason)
