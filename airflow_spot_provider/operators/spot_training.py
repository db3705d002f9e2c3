"""SpotTrainingOperator: a training job on spot VMs that always finishes, as one Airflow task.

Launch an attempt → defer to :class:`SpotJobTrigger` (no worker slot while it runs) → on its event:

- ``succeeded``: return the ledger summary (XCom);
- ``failed`` (non-zero exit, no interruption notice): raise, so a normal Airflow retry happens,
  and that retry resumes from the latest checkpoint;
- ``preempted`` / ``lost``: backup-save the dead VM's disk, relaunch from the latest checkpoint and
  defer again — in the same try, so preemptions never consume ``retries`` (bounded by
  ``max_preemptions``).

Every attempt is recorded in the ledger (``task_state_store``) before it is launched, so a restarted
worker or a new try reconnects to a live attempt instead of launching a second VM.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from airflow_spot_provider.backends import get_backend
from airflow_spot_provider.backends.base import InstanceFacts, JobIdentity, LaunchRequest, SpotBackend
from airflow_spot_provider.checkpoints.latest import latest_name, top_level
from airflow_spot_provider.checkpoints.objectstorage import store_for
from airflow_spot_provider.checkpoints.store import CheckpointStore
from airflow_spot_provider.ledger import AttemptRecord, Ledger, format_attempt, format_totals
from airflow_spot_provider.spec import DEFAULT_CHECKPOINT_PATTERN, JobSpec, SpotSpecError, machine_from
from airflow_spot_provider.triggers.spot_job import SpotJobTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

CONSOLE_TAIL = 15


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
    :param sync_interval: seconds between checkpoint syncs from the VM.
    :param poll_interval: seconds between status polls in the triggerer.
    :param env: extra environment variables for the job. Templated.
    :param pass_env: names of worker environment variables to pass to the job (none are by default).
    :param backend_options: backend settings (local: ``state_dir``, ``preempt_after``, ``notice_seconds``…).
    :param conn_id: Airflow connection for the checkpoint store and the cloud API (None for local).
    """

    template_fields: Sequence[str] = ("command", "checkpoint_uri", "resume_args", "env")
    ui_color = "#f5d76e"

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
        sync_interval: float = 30.0,
        poll_interval: float = 10.0,
        env: dict[str, str] | None = None,
        pass_env: Sequence[str] | None = None,
        backend_options: dict[str, Any] | None = None,
        conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Validate everything now, at DAG parse time, never after a VM is launched.
        self.spec = JobSpec(
            command=command, checkpoint_uri=checkpoint_uri, backend=backend, resume_args=resume_args or (),
            env=env or {}, pass_env=pass_env or (), checkpoint_pattern=checkpoint_pattern,
            sync_interval=sync_interval, poll_interval=poll_interval, max_preemptions=max_preemptions,
            machine=machine_from(machine),
        )
        if backend_options is not None and not isinstance(backend_options, dict):
            raise SpotSpecError(f"backend_options: must be a dict, got {type(backend_options).__name__}")
        self.backend_options = dict(backend_options or {})
        try:
            get_backend(backend, self.backend_options).validate_machine(self.spec.machine)
        except (ValueError, NotImplementedError) as err:
            raise SpotSpecError(str(err)) from err
        self.command = list(self.spec.command)
        self.checkpoint_uri = checkpoint_uri
        self.resume_args = list(self.spec.resume_args)
        self.env = dict(self.spec.env)
        self.backend = backend
        self.conn_id = conn_id

    # -- pieces derived from the rendered task -------------------------------------------------
    def _spec(self) -> JobSpec:
        return self.spec.rendered(command=self.command, checkpoint_uri=self.checkpoint_uri,
                                  resume_args=self.resume_args, env=self.env)

    def _backend(self) -> SpotBackend:
        return get_backend(self.backend, self.backend_options)

    @staticmethod
    def _identity(context: Context, ledger: Ledger) -> JobIdentity:
        ti = context["ti"]
        map_index = ti.map_index if ti.map_index is not None else -1
        return JobIdentity(ti.dag_id, ti.run_id, ti.task_id, map_index, ledger.job.nonce)

    def _request(self, spec: JobSpec, identity: JobIdentity, record: AttemptRecord) -> LaunchRequest:
        machine = spec.machine
        job_env = {name: os.environ[name] for name in spec.pass_env if name in os.environ}
        return LaunchRequest(
            identity=identity, attempt=record.attempt, command=list(spec.command),
            resume_args=list(spec.resume_args), env={**job_env, **spec.env}, checkpoint_uri=spec.checkpoint_uri,
            checkpoint_pattern=spec.checkpoint_pattern, sync_interval=spec.sync_interval,
            instance_type=machine.instance_types[0] if machine.instance_types else None,
            zone=machine.zones[0] if machine.zones else None, market=record.market,
        )

    # -- the loop ------------------------------------------------------------------------------
    def execute(self, context: Context) -> Any:
        ledger = Ledger(context["task_state_store"])
        current = ledger.current
        if current is not None and current.active:
            self.log.info("Reconnecting to attempt %d (%s) instead of launching a new VM",
                          current.attempt, current.instance_id or "launch in progress")
            return self._watch(context, ledger, current)
        return self._launch_next(context, ledger)

    def _launch_next(self, context: Context, ledger: Ledger) -> Any:
        spec = self._spec()
        try_number = context["ti"].try_number
        identity = self._identity(context, ledger)
        record = ledger.new_attempt(try_number, self.backend, identity.token)
        record.market = spec.machine.market_for(ledger.preemptions_in_try(try_number))
        ledger.save(record)
        facts = self._backend().launch(self._request(spec, identity, record))
        self._record_facts(record, facts, status="running")
        ledger.save(record)
        self.log.info("Launched %s", format_attempt(record))
        return self._defer(record, spec)

    def _watch(self, context: Context, ledger: Ledger, record: AttemptRecord) -> Any:
        """Reconnect to a recorded attempt: find its VM by token; launch it only if it never started."""
        spec = self._spec()
        request = self._request(spec, self._identity(context, ledger), record)
        backend = self._backend()
        facts = backend.find(request)
        if facts is None and record.status == "launching":
            facts = backend.launch(request)  # idempotent by token: never a second VM
        if facts is not None:
            self._record_facts(record, facts, status="running")
            ledger.save(record)
        elif record.instance_id is None:
            raise AirflowException(f"attempt {record.attempt} was recorded as running but has no instance")
        return self._defer(record, spec)

    def _defer(self, record: AttemptRecord, spec: JobSpec) -> None:
        self.defer(
            trigger=SpotJobTrigger(
                backend=self._backend().serialize(), instance_id=record.instance_id, attempt=record.attempt,
                checkpoint_uri=spec.checkpoint_uri, conn_id=self.conn_id, poll_interval=spec.poll_interval,
            ),
            method_name="execute_complete",
        )

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

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        ledger = Ledger(context["task_state_store"])
        record = ledger.attempt(int(event["attempt"]))
        current = ledger.current
        if record is None or current is None or record.attempt != current.attempt or not record.active:
            # A duplicate or stale event (e.g. a trigger that ran twice): the ledger decides what is live.
            self.log.info("Ignoring event for attempt %s: the ledger's current attempt is %s",
                          event.get("attempt"), current.attempt if current else None)
            return self.execute(context)
        spec = self._spec()
        self._finish_attempt(record, event, spec)
        ledger.save(record)
        self.log.info("%s", format_attempt(record))
        status = record.status
        if status == "succeeded":
            self.log.info("Job finished: %s", format_totals(ledger.totals()))
            return {**ledger.summary(), "checkpoint_uri": spec.checkpoint_uri}
        self._log_console(record)
        if status == "failed":
            self.log.info("Ledger so far: %s", format_totals(ledger.totals()))
            raise AirflowException(
                f"attempt {record.attempt}: the training command failed ({record.reason}) on {record.instance_id}. "
                f"Latest checkpoint: {record.last_checkpoint or 'none'}; a retry resumes from it."
            )
        used = ledger.preemptions_in_try(record.try_number)
        self.log.info("Ledger so far: %s", format_totals(ledger.totals()))
        if used > spec.max_preemptions:
            raise AirflowException(
                f"giving up: {used} preemptions/lost VMs in try {record.try_number} exceed max_preemptions="
                f"{spec.max_preemptions}. Latest checkpoint: {record.last_checkpoint or 'none'}; "
                "a retry resumes from it."
            )
        self.log.info("Relaunching from %s (%d of %d preemptions used in this try)",
                      record.last_checkpoint or "scratch", used, spec.max_preemptions)
        return self._launch_next(context, ledger)

    def _finish_attempt(self, record: AttemptRecord, event: dict[str, Any], spec: JobSpec) -> None:
        """Make sure the VM is gone, save what its disk holds, release the disk, fill in the record."""
        backend = self._backend()
        facts = InstanceFacts.from_dict(event["facts"])
        markers = event.get("markers") or {}
        backend.terminate(record.instance_id)  # the VM must be dead before its disk is read
        store = store_for(spec.checkpoint_uri, self.conn_id)
        if "final-sync" in markers:
            # Written by the agent after the job exited: nothing on the disk is newer.
            record.backup_save = {"skipped": True, "reason": "final sync after the job exited"}
            self.log.info("Backup-save of attempt %d skipped: the agent synced after the job exited", record.attempt)
        else:
            result = backend.backup_save(record.instance_id, store, record.attempt, spec.checkpoint_pattern)
            record.backup_save = result.to_dict()
            if not result.skipped:
                self.log.info("Backup-save of attempt %d: recovered %d file(s), %d bytes from the dead VM's disk; "
                              "latest checkpoint %s", record.attempt, len(result.uploaded), result.bytes, result.latest)
        backend.release(record.instance_id)
        self._record_facts(record, facts)
        record.status = event["status"]
        record.reason = event.get("reason") or ""
        record.exit_code = event.get("exit_code")
        record.started_at = (markers.get("started") or {}).get("time", record.started_at)
        record.restored_from = (markers.get("started") or {}).get("restored_from", record.restored_from)
        record.notice_at = (markers.get("notice") or {}).get("time", record.notice_at)
        record.progress = markers.get("progress") or record.progress
        record.ended_at = record.ended_at or (markers.get("exit") or {}).get("time") or event.get("observed_at")
        self._record_checkpoint(record, store, spec.checkpoint_pattern)

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
