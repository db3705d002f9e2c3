"""PyTorch, Lightning and Hugging Face examples, preempted twice on the local backend, end with the same model.

Each test runs the training command of an example DAG (``spot_torch_training``, ``spot_lightning_training``,
``spot_hf_training``) through dag.test() with the example's preemption plan: the market reclaims attempt 1
with a notice once a checkpoint of step 100 is on its disk (mid-epoch: 96 steps an epoch), and attempt 2
with no notice once one of step 200 is. The final weights must be bit-identical to those of the same
command run once, uninterrupted (started first and run alongside, to save time). Skipped when the
framework is not installed (the ``torch``, ``lightning`` and ``huggingface`` extras; ``dev`` has them).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from airflow_spot_provider.backends.local import LocalBackend
from airflow_spot_provider.checkpoints.latest import checkpoint_step, compile_pattern, latest_name, top_level
from airflow_spot_provider.checkpoints.store import CheckpointStore

from .conftest import REPO
from .e2e import run_job

pytestmark = pytest.mark.usefixtures("airflow_db")

EVERY_STEPS = 50  # the examples' --checkpoint-every-steps
STEPS_PER_EPOCH = 96  # the examples' 3072 training samples in batches of 32


def require(*modules: str) -> None:
    """Skip unless the modules are installed (found, not imported: importing Lightning alone takes seconds)."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (the torch, lightning and huggingface extras)")


@pytest.fixture(scope="module")
def example_dags() -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags_examples")).dags


def torch_weights(path: Path) -> dict[str, Any]:
    import torch

    return torch.load(path, weights_only=True)


def safetensors_weights(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(path)


def assert_bit_identical(left: dict[str, Any], right: dict[str, Any]) -> None:
    assert left.keys() == right.keys()
    for name in left:
        assert left[name].dtype == right[name].dtype, name
        assert left[name].numpy().tobytes() == right[name].numpy().tobytes(), name


def run_example(example_dags: dict[str, Any], dag_id: str, tmp_path: Path, state_dir: Path, model: str,
                weights: Callable[[Path], dict[str, Any]]) -> None:
    """Run the example's job preempted and uninterrupted; check the attempts, the notice save and the model."""
    train = example_dags[dag_id].get_task("train")
    command = [sys.executable, *train.command[1:]]
    baseline_dir = tmp_path / "baseline"
    baseline_dir.mkdir()
    with open(baseline_dir / "output.log", "wb") as output:
        baseline = subprocess.Popen(command, cwd=baseline_dir, stdout=output, stderr=subprocess.STDOUT, env={
            "SPOT_CHECKPOINT_DIR": str(baseline_dir / "checkpoints"), "PATH": os.environ["PATH"]})
        try:
            result = run_job(f"frameworks_{dag_id}", tmp_path, command, checkpoint_pattern=train.checkpoint_pattern,
                             max_preemptions=2, backend_options={**train.backend_options, "state_dir": str(state_dir)})
        finally:
            baseline_code = baseline.wait(timeout=300)
    assert baseline_code == 0, (baseline_dir / "output.log").read_text()[-3000:]

    assert result["state"] == "success" and result["try_number"] == 1
    first, second, third = attempts = result["summary"]["attempts"]
    assert [a["status"] for a in attempts] == ["preempted", "preempted", "succeeded"]
    assert first["restored_from"] is None
    assert second["restored_from"] == first["last_checkpoint"] is not None
    assert third["restored_from"] == second["last_checkpoint"] is not None

    # The notice came mid-epoch and only the step in flight was lost: the next attempt resumed from the
    # checkpoint the notice handler wrote (after the notice) at the step boundary where it saw the notice.
    pattern = compile_pattern(train.checkpoint_pattern)
    notice_plan, kill_plan = train.backend_options["preempt_after"]
    noticed = checkpoint_step(second["restored_from"], pattern)
    assert first["notice_at"] is not None
    assert noticed > notice_plan["at_step"] and noticed % STEPS_PER_EPOCH != 0
    output = LocalBackend(state_dir=str(state_dir)).console_output(first["instance_id"], tail=1000)
    assert f"interruption notice: saved {second['restored_from']} at step {noticed} " in "\n".join(output)
    store = CheckpointStore.from_uri(f"file://{tmp_path}/store/")
    files = {relpath: entry for relpath, entry in store.read_manifest().files.items()
             if top_level(relpath) == second["restored_from"]}
    assert files and min(entry["mtime"] for entry in files.values()) >= first["notice_at"]
    # No notice: backup-save published the newest periodic checkpoint from the dead attempt's disk.
    assert second["backup_save"]["skipped"] is False
    killed_at = checkpoint_step(third["restored_from"], pattern)
    assert killed_at >= kill_plan["at_step"] and killed_at % EVERY_STEPS == 0

    assert_bit_identical(weights(tmp_path / "store" / model), weights(baseline_dir / "checkpoints" / model))


def test_the_default_pattern_picks_each_frameworks_newest_checkpoint():
    """The operator needs no checkpoint_pattern for the integrations' names; the other entries are no checkpoints."""
    assert latest_name(["ckpt-00000050.pt", "ckpt-00000400.pt", "model.pt"]) == "ckpt-00000400.pt"
    assert latest_name(["step=00000200.ckpt", "step=00000450.ckpt", "model.pt"]) == "step=00000450.ckpt"
    assert latest_name(["checkpoint-500", "checkpoint-1000", "checkpoint-999", ".trainer-output", "model"]) == \
        "checkpoint-1000"


def test_local_pruning_keeps_the_newest_the_protected_and_what_is_newer_than_this_run(tmp_path):
    from airflow_spot_provider.resumable._prune import prune_checkpoints

    for step in (50, 100, 150, 200, 250):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "model").mkdir()
    removed = prune_checkpoints(tmp_path, r"^checkpoint-(?P<step>\d+)$", keep=2, newest=200,
                                protect={tmp_path / "checkpoint-50"})
    assert sorted(p.name for p in removed) == ["checkpoint-100"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-150", "checkpoint-200", "checkpoint-250", "checkpoint-50", "model"]


@pytest.mark.parametrize(("module", "requires", "absent"), [
    ("airflow_spot_provider.resumable", None, ()),
    ("airflow_spot_provider.resumable.torch", "torch", ("lightning", "pytorch_lightning", "transformers")),
    ("airflow_spot_provider.resumable.huggingface", "transformers", ("lightning", "pytorch_lightning")),
])
def test_each_integration_imports_without_the_other_frameworks(module, requires, absent):
    """The package imports no framework; an integration imports with the other frameworks missing. (Lightning
    is left out: its own dependency torchmetrics imports transformers whenever that is installed.)"""
    if requires:
        require(requires)
    code = (f"import sys\nsys.modules.update(dict.fromkeys({absent!r}))\nimport {module}\n"
            "print(sorted({'torch', 'lightning', 'transformers'} & {n for n, m in sys.modules.items() if m}))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == ("[]" if requires is None else repr(sorted({requires, "torch"})))


def test_pytorch_loop_resumes_bit_identically(example_dags, tmp_path, state_dir):
    require("torch")
    run_example(example_dags, "spot_torch_training", tmp_path, state_dir, "model.pt", torch_weights)


def test_lightning_resumes_bit_identically_mid_epoch(example_dags, tmp_path, state_dir):
    require("torch", "lightning")
    run_example(example_dags, "spot_lightning_training", tmp_path, state_dir, "model.pt", torch_weights)


def test_hugging_face_trainer_resumes_bit_identically_mid_epoch(example_dags, tmp_path, state_dir):
    require("torch", "transformers", "accelerate", "safetensors")
    run_example(example_dags, "spot_hf_training", tmp_path, state_dir, "model/model.safetensors",
                safetensors_weights)
