"""The ledger survives its state store being cleared or edited (the mirror), and a success is returned once."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_spot_provider.attempt import AttemptStatus
from airflow_spot_provider.backends.local import LocalBackend
from airflow_spot_provider.checkpoints.store import CheckpointStore
from airflow_spot_provider.ledger import JOB_KEY, Ledger, LedgerMirror
from airflow_spot_provider.operators.spot_training import SpotTrainingOperator

from .e2e import run_job, train_command
from .fake_context import context


class DictStore(dict):
    def set(self, key, value, *, retention=None):
        self[key] = json.loads(json.dumps(value))


def mirror(tmp_path: Path, run_id: str = "run") -> LedgerMirror:
    return LedgerMirror(CheckpointStore.from_uri(f"file://{tmp_path}/store/"), "dag", run_id, "train", -1)


def test_a_cleared_or_edited_state_store_is_restored_from_the_mirror(tmp_path):
    state = DictStore()
    ledger = Ledger(state, mirror(tmp_path))
    record = ledger.new_attempt(1, "local", lambda n: f"token-{n}")
    record.status, record.instance_id = AttemptStatus.RUNNING, "i-1"
    ledger.save(record)
    nonce = ledger.job.nonce

    state.clear()  # "Clear All Task State Store"
    again = Ledger(state, mirror(tmp_path))
    assert again.job.nonce == nonce and again.current.instance_id == "i-1" and again.current.status == "running"
    assert state["spot.attempt.0001"]["instance_id"] == "i-1" and state[JOB_KEY]["nonce"] == nonce  # rewritten

    state["spot.attempt.0001"] = {**state["spot.attempt.0001"], "status": "succeeded"}  # an edit in the UI
    assert Ledger(state, mirror(tmp_path)).current.status == "running"
    assert state["spot.attempt.0001"]["status"] == "running"

    del state["spot.attempt.0001"]  # one key deleted
    assert [a.instance_id for a in Ledger(state, mirror(tmp_path)).attempts()] == ["i-1"]
    # Another task instance on the same prefix has its own ledger.
    assert Ledger(DictStore(), mirror(tmp_path, run_id="other")).current is None


def test_a_ledger_written_before_the_mirror_existed_is_mirrored_when_read(tmp_path):
    state = DictStore()
    plain = Ledger(state)
    record = plain.new_attempt(1, "local", lambda n: f"token-{n}")
    plain.save(record)
    Ledger(state, mirror(tmp_path)).attempts()
    state.clear()
    assert Ledger(state, mirror(tmp_path)).current.token == "token-1"


def operator(tmp_path: Path, state_dir: Path, command: list[str], **kw) -> SpotTrainingOperator:
    return SpotTrainingOperator(task_id="train", command=command, checkpoint_uri=f"file://{tmp_path}/store/",
                                poll_interval=0.1, backend_options={"state_dir": str(state_dir), **kw})


def first_event(deferred: TaskDeferred) -> dict:
    async def run() -> dict:
        return (await anext(deferred.trigger.run())).payload

    return asyncio.run(run())


class WorkerDied(BaseException):
    """Stands for the worker process dying at this point: nothing after it runs, the ledger stays as written."""


def test_worker_dead_after_success_the_retry_returns_the_result_and_a_clear_trains_again(
        tmp_path, state_dir, monkeypatch):
    ledger_file = tmp_path / "ledger.json"
    quick = [sys.executable, "-c", "print('trained')"]
    with pytest.raises(TaskDeferred) as deferred:
        operator(tmp_path, state_dir, quick).execute(context(ledger_file))
    event = first_event(deferred.value)
    assert event["status"] == "succeeded"

    def die(*args, **kwargs):
        raise WorkerDied

    with monkeypatch.context() as patch:  # the attempt is recorded, released, then the worker dies
        patch.setattr(SpotTrainingOperator, "_decide", die)
        with pytest.raises(WorkerDied):
            operator(tmp_path, state_dir, quick).execute_complete(context(ledger_file), event)
    recorded = json.loads(ledger_file.read_text())["spot.attempt.0001"]
    assert recorded["status"] == "succeeded" and recorded["released"]

    # The automatic retry (try 2): the recorded result, no second VM.
    result = operator(tmp_path, state_dir, quick).execute(context(ledger_file, try_number=2))
    assert [a["status"] for a in result["attempts"]] == ["succeeded"]
    backend = LocalBackend(state_dir=str(state_dir))
    assert len(backend.list_instances()) == 1
    # A user's clear after that success (try 3): trains again.
    with pytest.raises(TaskDeferred) as again:
        operator(tmp_path, state_dir, quick).execute(context(ledger_file, try_number=3))
    assert len(backend.list_instances()) == 2 and again.value.trigger.watch.attempt == 2
    assert first_event(again.value)["status"] == "succeeded"


@pytest.mark.usefixtures("airflow_db")
def test_state_store_cleared_between_preemptions_the_job_finishes_with_its_whole_ledger(
        tmp_path, dataset, state_dir):
    """The UI's "Clear All" while attempt 2 runs (after attempt 1 was preempted): the operator restores the ledger
    from the mirror, backup-saves and releases attempt 2 when it is preempted, and reports all three attempts."""
    import threading

    from airflow.models.task_state_store import TaskStateStoreModel  # the table the UI's "Clear All" empties
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    backend = LocalBackend(state_dir=str(state_dir))
    cleared: list[str] = []
    stop = threading.Event()

    def clear_while_attempt_2_runs() -> None:
        while not stop.is_set():
            running = [i for i in backend.list_instances() if i.attempt == 2 and i.state == "running"]
            if running:
                with create_session() as session:
                    session.execute(delete(TaskStateStoreModel).where(
                        TaskStateStoreModel.dag_id == "e2e_ledger_cleared"))
                cleared.append(running[0].instance_id)
                return
            stop.wait(0.05)

    clearer = threading.Thread(target=clear_while_attempt_2_runs, daemon=True)
    clearer.start()
    try:
        result = run_job(
            "e2e_ledger_cleared", tmp_path, train_command(dataset, epochs=6, epoch_seconds=0.5), max_preemptions=3,
            backend_options={"state_dir": str(state_dir), "notice_seconds": 0,
                             "preempt_after": [{"at_step": 200}, {"at_step": 400}]})
    finally:
        stop.set()
        clearer.join()
    assert cleared, "the state store was never cleared while attempt 2 ran"
    assert result["state"] == "success" and result["try_number"] == 1
    attempts = result["summary"]["attempts"]
    assert [a["status"] for a in attempts] == ["preempted", "preempted", "succeeded"]
    assert attempts[1]["instance_id"] == cleared[0]
    assert all(a["released"] and a["backup_save"] is not None for a in attempts[:2])
    assert result["summary"]["totals"]["preemptions"] == 2
    assert not [i for i in backend.list_instances() if i.has_disk]  # no disk leaked
