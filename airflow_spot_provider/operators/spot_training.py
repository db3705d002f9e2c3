"""SpotTrainingOperator: a training job on spot VMs that always finishes, as one Airflow task.

Launch an attempt → defer to :class:`SpotJobTrigger` (no worker slot while it runs) → on its event:

- ``succeeded``: return the ledger summary (XCom);
- ``failed`` (non-zero exit, no interruption notice): raise, so a normal Airflow retry happens,
  and that retry resumes from the latest checkpoint;
- ``preempted`` / ``lost``: backup-save the dead VM's disk, relaunch from the latest checkpoint and
  defer again — in the same try, so preemptions never consume ``retries`` (bounded by
  ``max_preemptions``).

No capacity for a placement (type × zone) → the next one; after a full round, a timer deferral with
backoff (``docs/design.md``, "Capacity is waited for without a worker slot"). A backup-save that runs on a
helper VM is waited for by a trigger too.

Every step is recorded in the ledger (``task_state_store``) before it is taken, so a restarted worker
or a new try picks up where the last one stopped: reconnects to a live attempt, waits for a running
backup-save, finishes a cleanup — instead of launching a second VM.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, TaskDeferralTimeout

from airflow_spot_provider.attempt import DESCRIBE_ERROR, AttemptRecord, AttemptStatus
from airflow_spot_provider.backends import get_backend
from airflow_spot_provider.backends.base import (
    BackupSaveRequest,
    BackupSaveResult,
    JobIdentity,
    LaunchError,
    LaunchRequest,
    SpotBackend,
)
from airflow_spot_provider.checkpoints.objectstorage import store_for
from airflow_spot_provider.checkpoints.retention import apply_retention
from airflow_spot_provider.checkpoints.store import CheckpointStore
from airflow_spot_provider.ledger import Ledger, LedgerMirror, format_attempt, format_totals
from airflow_spot_provider.links.spot import SpotAttemptLink, SpotCheckpointLink
from airflow_spot_provider.spec import DEFAULT_CHECKPOINT_PATTERN, JobSpec, SpotSpecError, machine_from, number
from airflow_spot_provider.triggers.backup_save import SAVED, BackupSaveTrigger
from airflow_spot_provider.triggers.base import DESCRIBE_FAILURE_TIMEOUT, Watch
from airflow_spot_provider.triggers.spot_job import SpotJobTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

CONSOLE_TAIL = 15
#: Longest timer deferral while waiting for capacity.
MAX_CAPACITY_DELAY = 600.0


@dataclass
class _Call:
    """What one entry into the operator (``execute`` or a trigger's event) works with, built once."""

    context: Context
    spec: JobSpec
    backend: SpotBackend
    store: CheckpointStore
    ledger: Ledger
    identity: JobIdentity

    @property
    def try_number(self) -> int:
        return self.context["ti"].try_number


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
        # The spec's fields live here once (the templated ones are rendered in place by Airflow); the JobSpec is
        # derived from them, and built now to validate everything at DAG parse time, never after a VM is launched.
        self.command = command
        self.checkpoint_uri = checkpoint_uri
        self.backend = backend
        self.resume_args = resume_args or ()
        self.env = env or {}
        self.pass_env = pass_env or ()
        self.checkpoint_pattern = checkpoint_pattern
        self.sync_interval = sync_interval
        self.poll_interval = poll_interval
        self.max_preemptions = max_preemptions
        self.keep_checkpoints = keep_checkpoints
        self.machine = machine_from(machine)
        spec = self.spec
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
        self.conn_id = conn_id
        try:
            self._backend().validate_machine(spec.machine)
        except (ValueError, NotImplementedError) as err:
            raise SpotSpecError(str(err)) from err

    @property
    def spec(self) -> JobSpec:
        """The job as this task describes it now (rendered once the task runs), validated."""
        return JobSpec(
            command=self.command, checkpoint_uri=self.checkpoint_uri, backend=self.backend,
            resume_args=self.resume_args, env=self.env, pass_env=self.pass_env,
            checkpoint_pattern=self.checkpoint_pattern, sync_interval=self.sync_interval,
            poll_interval=self.poll_interval, max_preemptions=self.max_preemptions,
            keep_checkpoints=self.keep_checkpoints, machine=self.machine,
        )

    # -- what one call works with ----------------------------------------------------------------
    def _backend(self) -> SpotBackend:
        return get_backend(self.backend, self.backend_options, conn_id=self.conn_id)

    def _call(self, context: Context) -> _Call:
        """The rendered spec, the backend, the store and the ledger of this call: each built once."""
        spec = self.spec.rendered()
        store = store_for(spec.checkpoint_uri, self.conn_id)
        ti = context["ti"]
        map_index = ti.map_index if ti.map_index is not None else -1
        ledger = Ledger(context["task_state_store"], LedgerMirror(store, ti.dag_id, ti.run_id, ti.task_id, map_index))
        ledger.locate(spec.checkpoint_uri, self.conn_id)
        identity = JobIdentity(ti.dag_id, ti.run_id, ti.task_id, map_index, ledger.job.nonce)
        call = _Call(context, spec, self._backend(), store, ledger, identity)
        self._show_links(call, ledger.current)  # every call reads the ledger first: its links start from it
        return call

    def _request(self, call: _Call, record: AttemptRecord) -> LaunchRequest:
        spec, machine = call.spec, call.spec.machine
        placements = machine.placements()
        instance_type, zone = placements[record.placement % len(placements)]
        job_env = {name: os.environ[name] for name in spec.pass_env if name in os.environ}
        return LaunchRequest(
            identity=call.identity, attempt=record.attempt, command=list(spec.command),
            resume_args=list(spec.resume_args), env={**job_env, **spec.env}, checkpoint_uri=spec.checkpoint_uri,
            checkpoint_pattern=spec.checkpoint_pattern, sync_interval=spec.sync_interval,
            instance_type=instance_type, zone=zone, market=record.market, launch_try=len(record.launch_errors),
            image=machine.image, disk_gb=machine.disk_gb, max_price_per_hour=machine.max_price_per_hour,
        )

    def _deadline(self, call: _Call) -> float | None:
        return call.ledger.deadline(call.try_number, self.job_timeout)

    # -- entry: a new try, or a restarted worker -----------------------------------------------
    def execute(self, context: Context) -> Any:
        return self._resume(self._call(context))

    def _resume(self, call: _Call) -> Any:
        """Continue from whatever the ledger says happened last."""
        ledger = call.ledger
        self._deadline(call)
        if (done := ledger.unreturned_success) is not None:
            # The job succeeded but the worker died before Airflow heard of it: this is the automatic retry.
            # Return the recorded result; only a user's clear after a returned success trains again.
            self.log.info("Attempt %d already succeeded; returning its recorded result instead of training again",
                          done.attempt)
            return self._decide(call, done)
        current = ledger.current
        if current is not None and current.active:
            self.log.info("Reconnecting to attempt %d (%s) instead of launching a new VM",
                          current.attempt, current.instance_id or "launch in progress")
            return self._watch(call, current)
        if current is not None and current.instance_id and not current.released:
            self.log.info("Attempt %d ended (%s) but its cleanup did not finish: finishing it first",
                          current.attempt, current.status.value)
            return self._cleanup(call, current)
        return self._launch_next(call)

    # -- launching -----------------------------------------------------------------------------
    def _launch_next(self, call: _Call) -> Any:
        ledger = call.ledger
        record = ledger.new_attempt(call.try_number, self.backend, call.identity.token,
                                    after=call.store.last_attempt())
        record.market = call.spec.machine.market_for(ledger.preemptions_in_try(call.try_number))
        ledger.save(record)
        return self._launch(call, record)

    def _launch(self, call: _Call, record: AttemptRecord) -> Any:
        """Try placements in order until one has capacity; after a full round, wait on a timer."""
        # Older attempts may still be alive somewhere (a VM wrongly believed dead): from now on the store
        # refuses their writes. The previous attempt's backup-save is already done (it runs before this).
        call.store.raise_fence(record.attempt)
        placements = len(call.spec.machine.placements())
        while True:
            request = self._request(call, record)
            try:
                facts = call.backend.launch(request)
            except LaunchError as err:
                record.refused(err.code, str(err), request.instance_type, request.zone)
                self.log.warning("No launch of attempt %d on %s in %s: %s", record.attempt,
                                 request.instance_type or "default type", request.zone or "default zone", err)
                if err.move_on:
                    record.placement += 1
                if not err.move_on or record.placement % placements == 0:
                    return self._wait_for_capacity(call, record)
                call.ledger.save(record)
                continue
            record.running_on(facts)
            call.ledger.save(record)
            self.log.info("Launched %s", format_attempt(record))
            return self._defer_watch(call, record)

    def _wait_for_capacity(self, call: _Call, record: AttemptRecord) -> Any:
        from airflow.providers.standard.triggers.temporal import DateTimeTrigger

        delay = min(MAX_CAPACITY_DELAY, self.capacity_retry_delay * 2 ** record.capacity_waits)
        deadline = self._deadline(call)
        late = deadline is not None and time.time() + delay > deadline
        if late and record.market == "spot" and call.spec.machine.on_demand_if_late:
            self.log.warning("Waiting %.0fs more for spot capacity would miss job_timeout: attempt %d goes on-demand",
                             delay, record.attempt)
            record.market, record.placement = "on-demand", 0
            call.ledger.save(record)
            return self._launch(call, record)
        if late:
            record.cancel("no capacity before job_timeout")
            call.ledger.save(record)
            raise AirflowException(
                f"attempt {record.attempt}: no capacity in any placement before job_timeout; launch errors: "
                + "; ".join(e["message"] for e in record.launch_errors[-3:]))
        record.capacity_waits += 1
        call.ledger.save(record)
        self.log.info("Waiting %.0fs for capacity (no worker slot is held), then trying again", delay)
        self.defer(trigger=DateTimeTrigger(moment=datetime.now(timezone.utc) + timedelta(seconds=delay)),
                   method_name="retry_launch", timeout=self._timeout(call))

    def retry_launch(self, context: Context, event: Any = None) -> Any:
        call = self._call(context)
        current = call.ledger.current
        if current is None or current.status is not AttemptStatus.LAUNCHING:
            return self._resume(call)
        return self._launch(call, current)

    # -- watching ------------------------------------------------------------------------------
    def _watch(self, call: _Call, record: AttemptRecord) -> Any:
        """Reconnect to a recorded attempt: find its VM by token; launch it only if it never started."""
        facts = call.backend.find(self._request(call, record))
        if facts is None and record.status is AttemptStatus.LAUNCHING:
            return self._launch(call, record)  # idempotent by token: never a second VM
        if facts is not None:
            record.running_on(facts)
            call.ledger.save(record)
        elif record.instance_id is None:
            raise AirflowException(f"attempt {record.attempt} was recorded as running but has no instance")
        return self._defer_watch(call, record)

    def _timeout(self, call: _Call) -> timedelta | None:
        deadline = self._deadline(call)
        return None if deadline is None else timedelta(seconds=max(1.0, deadline - time.time()))

    def _watch_of(self, call: _Call, record: AttemptRecord, instance_id: str) -> Watch:
        return Watch(backend=call.backend.serialize(), instance_id=instance_id, attempt=record.attempt,
                     checkpoint_uri=call.spec.checkpoint_uri, conn_id=self.conn_id,
                     poll_interval=call.spec.poll_interval, cancel_on_kill=self.cancel_on_kill,
                     describe_failure_timeout=self.describe_failure_timeout)

    def _show_links(self, call: _Call, record: AttemptRecord | None) -> None:
        """What the task's extra links show once this run ends (the Task SDK stores them in XCom then).

        Set on every run, "" when there is no URL: whatever a run leaves is what the links show.
        """
        try:
            instance_id = record.instance_id if record is not None else None
            SpotAttemptLink.show(self, call.backend.console_url(instance_id) if instance_id else None)
            SpotCheckpointLink.show(self, call.backend.storage_console_url(call.spec.checkpoint_uri))
        except Exception as err:  # noqa: BLE001 - a link is a courtesy: it never fails the run
            self.log.warning("The task's extra links are not set: %s", err)

    def _defer_watch(self, call: _Call, record: AttemptRecord) -> None:
        self._show_links(call, record)
        self.defer(trigger=SpotJobTrigger.of(self._watch_of(call, record, record.instance_id)),
                   method_name="execute_complete", timeout=self._timeout(call))

    # -- an attempt ended ----------------------------------------------------------------------
    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        call = self._call(context)
        record = call.ledger.attempt(int(event["attempt"]))
        current = call.ledger.current
        if record is None or current is None or record.attempt != current.attempt or not record.active:
            # A duplicate or stale event (e.g. a trigger that ran twice): the ledger decides what is live.
            self.log.info("Ignoring event for attempt %s: the ledger's current attempt is %s",
                          event.get("attempt"), current.attempt if current else None)
            return self._resume(call)
        if event["status"] == DESCRIBE_ERROR:
            raise self._describe_error(record, event)
        record.ended(event)
        call.ledger.save(record)
        if record.sync_error:
            self.log.warning("Attempt %d could not publish its last checkpoints (%s): backup-save reads its disk",
                             record.attempt, record.sync_error)
        self.log.info("%s", format_attempt(record))
        return self._cleanup(call, record)

    @staticmethod
    def _describe_error(record: AttemptRecord, event: dict[str, Any]) -> AirflowException:
        # Nothing is recorded, terminated or released: the VM may well be fine, only the cloud API refused
        # us. The ledger still holds the attempt (or its backup-save helper), so the next try picks it up.
        return AirflowException(
            f"attempt {record.attempt}: the cloud could not describe {event.get('instance_id')} for "
            f"{event.get('failing_seconds')}s: {event.get('reason')}. Nothing was terminated; "
            "a retry reconnects to it.")

    def _cleanup(self, call: _Call, record: AttemptRecord) -> Any:
        """Make sure the VM is gone, save what its disk holds, release the disk; then decide."""
        call.backend.terminate(record.instance_id)  # the VM must be dead before its disk is read
        if record.backup_helper:
            return self._defer_backup_save(call, record)
        if record.backup_save is None:
            if record.final_synced:
                # Written by the agent after the job exited: nothing on the disk is newer.
                record.backup_save = {"skipped": True, "reason": "final sync after the job exited"}
                self.log.info("Backup-save of attempt %d skipped: the agent synced after the job exited",
                              record.attempt)
            else:
                result = call.backend.backup_save(BackupSaveRequest(
                    instance_id=record.instance_id, attempt=record.attempt, checkpoint_uri=call.spec.checkpoint_uri,
                    checkpoint_pattern=call.spec.checkpoint_pattern, token=record.token))
                if result.helper_id:
                    record.backup_helper = result.helper_id
                    call.ledger.save(record)
                    self.log.info("Backup-save of attempt %d runs on helper %s", record.attempt, result.helper_id)
                    return self._defer_backup_save(call, record)
                self._record_backup_save(record, result)
            call.ledger.save(record)
        return self._release(call, record)

    def _defer_backup_save(self, call: _Call, record: AttemptRecord) -> None:
        self.defer(trigger=BackupSaveTrigger.of(self._watch_of(call, record, record.backup_helper)),
                   method_name="backup_save_complete", timeout=self._timeout(call))

    def backup_save_complete(self, context: Context, event: dict[str, Any]) -> Any:
        call = self._call(context)
        record = call.ledger.current
        if record is None or record.backup_helper != event.get("instance_id"):
            self.log.info("Ignoring a backup-save event for %s: no such helper in the ledger", event.get("instance_id"))
            return self._resume(call)
        if event.get("status") == DESCRIBE_ERROR:
            raise self._describe_error(record, event)
        result = call.backend.finish_backup_save(record.instance_id, record.backup_helper, event.get("marker"))
        if result.error is None and event.get("status") != SAVED:
            result.error = event.get("reason") or "the backup-save helper ended without a result"
        record.backup_helper = None
        self._record_backup_save(record, result)
        call.ledger.save(record)
        return self._release(call, record)

    def _record_backup_save(self, record: AttemptRecord, result: BackupSaveResult) -> None:
        record.backup_save = result.to_dict()
        if result.error:
            self.log.error("Backup-save of attempt %d failed: %s", record.attempt, result.error)
        elif not result.skipped:
            self.log.info("Backup-save of attempt %d: recovered %d file(s), %d bytes from the dead VM's disk; "
                          "latest checkpoint %s", record.attempt, len(result.uploaded), result.bytes, result.latest)

    def _release(self, call: _Call, record: AttemptRecord) -> Any:
        spec = call.spec
        if record.backup_save and record.backup_save.get("error"):
            # Keep the disk: it holds the only copy of what the job wrote last. A retry saves it again.
            record.backup_save_errors = [*record.backup_save_errors, record.backup_save["error"]]
            record.backup_save = None
            call.ledger.save(record)
            raise AirflowException(
                f"attempt {record.attempt}: backup-save failed; its disk is kept and a retry saves it again")
        call.backend.release(record.instance_id, token=record.token)
        record.released = True
        record.last_checkpoint, record.last_checkpoint_at = call.store.latest_published(
            spec.checkpoint_pattern, record.attempt)
        call.ledger.save(record)
        if spec.keep_checkpoints is not None:
            # Now nothing may write: this attempt's VM is gone, older ones are fenced, the next is not launched.
            try:
                kept = apply_retention(call.store, spec.checkpoint_pattern, spec.keep_checkpoints)
                self.log.info("Checkpoint retention: %s", kept.describe())
            except Exception as err:  # noqa: BLE001 - housekeeping never fails the job; the next release retries
                self.log.warning("Checkpoint retention failed (the next attempt's release tries again): %s", err)
        return self._decide(call, record)

    def _decide(self, call: _Call, record: AttemptRecord) -> Any:
        spec, ledger = call.spec, call.ledger
        if record.status is AttemptStatus.SUCCEEDED:
            ledger.returning(record)
            self.log.info("Job finished: %s", format_totals(ledger.totals()))
            return {**ledger.summary(), "checkpoint_uri": spec.checkpoint_uri}
        self._log_console(call, record)
        self.log.info("Ledger so far: %s", format_totals(ledger.totals()))
        this_try = call.try_number
        if record.status is AttemptStatus.FAILED and record.try_number == this_try:
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
        return self._launch_next(call)

    def _log_console(self, call: _Call, record: AttemptRecord) -> None:
        lines = call.backend.console_output(record.instance_id, CONSOLE_TAIL)
        if lines:
            self.log.info("Last output of attempt %d:\n  %s", record.attempt, "\n  ".join(lines))

    # -- the deferral timed out (job_timeout) ----------------------------------------------------
    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except TaskDeferralTimeout:
            self._abandon(self._call(context), f"job_timeout of {self.job_timeout:g}s exceeded")
            raise

    def _abandon(self, call: _Call, reason: str) -> None:
        """Remove the current attempt's VM, helper and disk: the task is about to fail."""
        record = call.ledger.current
        if record is None or record.released:
            return
        backend = call.backend
        for instance_id in filter(None, (record.backup_helper, record.instance_id)):
            backend.terminate(instance_id)
        if record.instance_id and not record.backup_helper:
            backend.release(record.instance_id, token=record.token)
        elif record.backup_helper:
            # Its backup-save did not finish: keep the disk (the only copy of the newest files); the sweep
            # removes it once the job is no longer live.
            self.log.warning("Attempt %d's disk is kept: its backup-save was cut short", record.attempt)
        if record.active:
            record.cancel(reason)
        record.released = not record.backup_helper
        record.backup_helper = None
        record.ended_at = record.ended_at or time.time()
        call.ledger.save(record)
        self.log.warning("Attempt %d cancelled (%s): its VM and disk are removed", record.attempt, reason)
