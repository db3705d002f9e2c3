"""Rehearsed preemptions (``airflow-spot rehearse``): a notice through the checkpoint store that the agent treats like
the cloud's, on a real job run with dag.test() on the local backend."""

from __future__ import annotations

import threading

import pytest

from airflow_spot_provider import cli
from airflow_spot_provider.attempt import AttemptRecord, AttemptStatus
from airflow_spot_provider.backends.local import LocalBackend
from airflow_spot_provider.checkpoints.latest import checkpoint_step, compile_pattern
from airflow_spot_provider.ledger import JobRecord
from airflow_spot_provider.rehearsal import RehearsalRefused, rehearse

from .e2e import CKPT_PATTERN, assert_bit_identical, baseline_model, run_job, train_command


def first_attempt_with_a_checkpoint(backend: LocalBackend, step: int, stop: threading.Event):
    """The running attempt 1, once its disk holds a checkpoint of ``step`` or later (None if stopped first)."""
    pattern = compile_pattern(CKPT_PATTERN)
    while not stop.is_set():
        for item in backend.list_instances():
            disk = backend.instances / item.instance_id / "disk" / "checkpoints"
            names = [p.name for p in disk.iterdir()] if disk.is_dir() else []
            if item.attempt == 1 and item.running and any(
                    (n := checkpoint_step(name, pattern)) is not None and n >= step for name in names):
                return item
        stop.wait(0.05)
    return None


@pytest.mark.usefixtures("airflow_db")
def test_a_rehearsed_preemption_resumes_in_the_same_try_with_an_identical_model(tmp_path, dataset, state_dir,
                                                                             capsys):
    backend = LocalBackend(state_dir=str(state_dir))
    posted: list[int] = []
    stop = threading.Event()

    def rehearse_attempt_1() -> None:
        item = first_attempt_with_a_checkpoint(backend, 200, stop)
        if item is not None:
            job = f"{item.tags['spot-dag-id']}/{item.tags['spot-run-id']}/{item.tags['spot-task-id']}"
            posted.append(cli.main(["--state-dir", str(state_dir), "rehearse", job, "--grace", "10"]))

    rehearser = threading.Thread(target=rehearse_attempt_1, daemon=True)
    rehearser.start()
    # 16 s of training: the agent looks for a rehearsal every 5 s, and it is posted at step 200 (about 1 s in).
    command = train_command(dataset, epochs=40, epoch_seconds=0.4)
    try:
        result = run_job("e2e_rehearsal", tmp_path, command, sync_interval=60.0,
                         backend_options={"state_dir": str(state_dir)})
    finally:
        stop.set()
        rehearser.join()
    assert posted == [0], "the rehearsal was never posted"
    assert "rehearsal posted for attempt 1" in capsys.readouterr().out
    assert result["state"] == "success" and result["try_number"] == 1
    first, second = result["summary"]["attempts"]
    assert first["status"] == "preempted" and first["reason"].startswith("rehearsed preemption"), first
    assert first["notice_at"] is not None and second["status"] == "succeeded"
    # The job saved on the notice (sync_interval is 60 s: only the notice path published its checkpoint).
    assert second["restored_from"] == first["last_checkpoint"] is not None
    assert_bit_identical(tmp_path / "store" / "model.npz", baseline_model(tmp_path, command))


def test_a_rehearsal_needs_a_running_attempt_and_a_sane_grace(tmp_path):
    job = JobRecord(checkpoint_uri=f"file://{tmp_path}/store/")
    running = AttemptRecord(attempt=2, try_number=1, backend="local", token="t", status=AttemptStatus.RUNNING)
    with pytest.raises(RehearsalRefused, match="grace"):
        rehearse(job, running, grace=-1)
    with pytest.raises(RehearsalRefused, match="no running attempt"):
        rehearse(job, AttemptRecord(attempt=2, try_number=1, backend="local", token="t",
                                    status=AttemptStatus.SUCCEEDED))
    with pytest.raises(RehearsalRefused, match="where the job's checkpoints are"):
        rehearse(JobRecord(), running)


def test_rehearse_names_a_job_it_cannot_find(airflow_db, capsys):
    assert cli.main(["rehearse", "nodag/norun/notask"]) == 1
    assert "has no spot ledger" in capsys.readouterr().err
    assert cli.main(["rehearse", "only-a-dag"]) == 2
