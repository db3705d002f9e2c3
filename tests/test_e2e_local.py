"""End to end through dag.test() on the local backend: real agent, real processes, real training."""

from __future__ import annotations

import pytest

from airflow_spot_provider.checkpoints.latest import checkpoint_step, compile_pattern, top_level
from airflow_spot_provider.checkpoints.store import CheckpointStore

from .e2e import CKPT_PATTERN, assert_bit_identical, baseline_model, run_job, train_command

pytestmark = pytest.mark.usefixtures("airflow_db")


def step_of(name: str) -> int:
    return checkpoint_step(name, compile_pattern(CKPT_PATTERN))


def test_three_preemptions_one_try_bit_identical_model(tmp_path, dataset, state_dir):
    command = train_command(dataset, epochs=8, epoch_seconds=0.6)
    result = run_job(
        "e2e_three_preemptions", tmp_path, command, max_preemptions=3,
        # 1st: notice with time to save; 2nd: no time to act (backup-save recovers the disk); 3rd: notice.
        # Each at a checkpoint step, so the plan does not depend on how fast the machine trains.
        backend_options={"state_dir": str(state_dir), "notice_seconds": 1.0,
                         "preempt_after": [{"at_step": 200}, {"at_step": 400, "notice_seconds": 0},
                                           {"at_step": 600}]},
    )
    assert result["state"] == "success"
    assert result["try_number"] == 1  # preemptions did not consume retries
    attempts = result["summary"]["attempts"]
    assert [a["status"] for a in attempts] == ["preempted", "preempted", "preempted", "succeeded"]
    assert all(a["reason"] for a in attempts)
    assert all(a["try_number"] == 1 for a in attempts)
    # Every resumed attempt started from the checkpoint the previous one left, never from scratch.
    for before, after in zip(attempts, attempts[1:], strict=False):
        assert after["restored_from"] == before["last_checkpoint"] is not None
    assert attempts[1]["backup_save"]["skipped"] is False  # the no-notice kill was saved from the disk
    totals = result["summary"]["totals"]
    assert totals["preemptions"] == 3 and totals["cost"] > 0 and totals["savings_pct"] is not None
    assert_bit_identical(tmp_path / "store" / "model.npz", baseline_model(tmp_path, command))


def test_user_failure_consumes_one_retry_and_the_retry_resumes(tmp_path, dataset, state_dir):
    marker = tmp_path / "failed-once"
    command = train_command(dataset, epochs=5, extra=["--fail-at-epoch", "4", "--fail-once-marker", str(marker)])
    result = run_job("e2e_user_failure", tmp_path, command, retries=1,
                     backend_options={"state_dir": str(state_dir)})
    assert result["state"] == "success" and result["try_number"] == 2
    first, second = result["summary"]["attempts"]
    assert (first["status"], first["try_number"], first["exit_code"]) == ("failed", 1, 1)
    assert second["status"] == "succeeded" and second["try_number"] == 2
    assert step_of(second["restored_from"]) == 300  # epochs 1-3 done before the failure: not from scratch
    assert result["summary"]["totals"]["user_failures"] == 1


def test_notice_handler_checkpoint_is_what_the_next_attempt_resumes_from(tmp_path, dataset, state_dir):
    command = train_command(dataset, epochs=4, epoch_seconds=1.0)
    result = run_job(
        "e2e_notice_grace", tmp_path, command, sync_interval=60.0,  # only the notice path can save the work
        backend_options={"state_dir": str(state_dir), "preempt_after": [{"at_step": 100}], "notice_seconds": 3.0},
    )
    first, second = result["summary"]["attempts"]
    assert first["status"] == "preempted" and first["notice_at"] is not None
    store = CheckpointStore.from_uri(f"file://{tmp_path}/store/")
    entry = store.read_manifest().files[second["restored_from"]]
    # The checkpoint was written after the notice, mid-epoch: only the step in flight was lost.
    assert entry["mtime"] >= first["notice_at"]
    assert step_of(second["restored_from"]) % 100 != 0
    assert result["state"] == "success"


def test_reentrant_script_gets_resume_args_only_when_a_checkpoint_was_restored(tmp_path, dataset, state_dir):
    from .conftest import TRAINING

    command = [*train_command(dataset, epochs=4, epoch_seconds=0.6)]
    command[1] = str(TRAINING / "train_reentrant.py")
    result = run_job(
        "e2e_reentrant", tmp_path, command, resume_args=["--from-checkpoint", "{resume_from}"],
        backend_options={"state_dir": str(state_dir), "preempt_after": [{"at_step": 100}], "notice_seconds": 1.0},
    )
    assert result["state"] == "success"
    first, second = result["summary"]["attempts"]
    assert first["restored_from"] is None and second["restored_from"] == first["last_checkpoint"]
    assert_bit_identical(tmp_path / "store" / "model.npz", baseline_model(tmp_path, command))


def test_example_dags_parse_without_errors():
    from airflow.dag_processing.dagbag import DagBag

    from .conftest import REPO

    bag = DagBag(dag_folder=str(REPO / "dags_examples"))
    assert not bag.import_errors
    assert {"spot_weekly_retraining", "spot_reentrant_training"} <= set(bag.dag_ids)


def test_a_new_run_on_the_same_prefix_continues_after_the_old_attempts(tmp_path, dataset, state_dir):
    """Reusing a checkpoint prefix continues training: the new run's attempts are numbered after the old
    run's (markers never collide, the fence never refuses it) and it resumes from the old checkpoint."""
    options = {"backend_options": {"state_dir": str(state_dir)}}
    first = run_job("e2e_reuse_prefix", tmp_path, train_command(dataset, epochs=2), **options)
    second = run_job("e2e_reuse_prefix", tmp_path, train_command(dataset, epochs=3), **options)
    assert first["state"] == second["state"] == "success"
    (old,) = first["summary"]["attempts"]
    (new,) = second["summary"]["attempts"]
    assert (old["attempt"], new["attempt"]) == (1, 2)
    assert new["restored_from"] == old["last_checkpoint"] is not None


def test_keep_checkpoints_prunes_the_store_and_every_attempt_still_resumes(tmp_path, dataset, state_dir):
    """Retention after each attempt's release: the next attempt restores what the last one left, the store
    ends with the newest checkpoint only, and only the last attempt's staging directories remain."""
    command = train_command(dataset, epochs=5, epoch_seconds=0.3)
    result = run_job(
        "e2e_keep_checkpoints", tmp_path, command, keep_checkpoints=1, max_preemptions=2,
        # A notice with time to save, then a kill without one (backup-save publishes from the disk).
        backend_options={"state_dir": str(state_dir), "notice_seconds": 1.0,
                         "preempt_after": [{"at_step": 200}, {"at_step": 300, "notice_seconds": 0}]},
    )
    assert result["state"] == "success"
    attempts = result["summary"]["attempts"]
    assert [a["status"] for a in attempts] == ["preempted", "preempted", "succeeded"]
    for before, after in zip(attempts, attempts[1:], strict=False):
        assert after["restored_from"] == before["last_checkpoint"] is not None
    store = CheckpointStore.from_uri(f"file://{tmp_path}/store/")
    newest = attempts[-1]["last_checkpoint"]
    names = {top_level(relpath) for relpath in store.read_manifest().files}
    assert {n for n in names if step_of(n) is not None} == {newest}
    assert {p.name for p in (tmp_path / "store").iterdir() if step_of(p.name) is not None} == {newest}
    staging = [p.name for p in (tmp_path / "store" / ".spot" / "staging").iterdir()]
    assert {CheckpointStore.staging_attempt(name) for name in staging} <= {attempts[-1]["attempt"]}
    assert_bit_identical(tmp_path / "store" / "model.npz", baseline_model(tmp_path, command))
