"""Example training scripts: a run interrupted anywhere and resumed ends bit-identical to an unbroken one."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "dags_examples" / "training"
TRAIN = SCRIPTS / "train.py"
REENTRANT = SCRIPTS / "train_reentrant.py"
EPOCHS = 6
STEPS_PER_EPOCH = 100  # 3200 training samples / batch size 32
PACE = ["--min-epoch-seconds", "0.4"]  # slow runs down so the test can interrupt them mid-epoch
SLOW_PACE = ["--min-epoch-seconds", "2.0"]  # room to interrupt mid-epoch on a loaded machine
HALF_EPOCH_CHECKPOINTS = ["--checkpoint-every-steps", str(STEPS_PER_EPOCH // 2)]  # progress points to wait for

Reference = tuple[Path, subprocess.CompletedProcess[str]]  # model path and the run that wrote it


def _load_mlp() -> ModuleType:
    # Loaded from its file, as the scripts do, without putting the examples directory on sys.path.
    spec = importlib.util.spec_from_file_location("example_training_mlp", SCRIPTS / "mlp.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mlp = _load_mlp()


def _env(ckpt: Path, attempt: int, **extra: str | Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(SPOT_CHECKPOINT_DIR=str(ckpt), SPOT_ATTEMPT=str(attempt))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run(script: Path, args: list[str], ckpt: Path, attempt: int = 1,
         **extra: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(script), *args], env=_env(ckpt, attempt, **extra),
                          cwd=ckpt.parent, capture_output=True, text=True, timeout=60, check=False)


def _start(script: Path, args: list[str], ckpt: Path, **extra: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(script), *args], env=_env(ckpt, 1, **extra), cwd=ckpt.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert proc.poll() is None, f"script exited early: {proc.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _interrupted(proc: subprocess.Popen[str]) -> int:
    """Wait for an interrupted run; check its exit code and return the step of its notice checkpoint."""
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 143, (out, err)
    match = re.search(r"^interruption notice: saved ckpt-(\d{8})\.npz at step (\d+)$", out, re.MULTILINE)
    assert match and int(match[1]) == int(match[2]), out
    return int(match[2])


def _assert_same_model(path: Path, expected: Path) -> None:
    with np.load(path) as got, np.load(expected) as want:
        assert got.files == want.files
        for key in want.files:
            assert got[key].dtype == want[key].dtype == np.float64
            assert np.array_equal(got[key], want[key])
            assert got[key].tobytes() == want[key].tobytes()  # bit-identical, not just equal


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mlp.make_dataset(tmp_path_factory.mktemp("data") / "data.npz")


@pytest.fixture
def common(data: Path) -> list[str]:
    return ["--data", str(data), "--epochs", str(EPOCHS), "--output", "out/model.npz"]


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """An uninterrupted run (with extra step checkpoints, which must not change the result)."""
    ckpt = tmp_path_factory.mktemp("reference") / "ckpt"
    args = ["--data", str(data), "--epochs", str(EPOCHS), "--output", "out/model.npz"]
    result = _run(TRAIN, [*args, "--checkpoint-every-steps", "40"], ckpt,
                  SPOT_PROGRESS_FILE=ckpt.parent / "progress.json")
    assert result.returncode == 0, result.stderr
    return ckpt.parent / "out" / "model.npz", result


def test_uninterrupted_run(reference: Reference, data: Path) -> None:
    model, result = reference
    assert result.stdout.startswith("starting fresh (attempt 1)\n")
    assert re.search(r"^final validation accuracy 0\.9\d+ ", result.stdout, re.MULTILINE), result.stdout
    assert mlp.evaluate(model, data)["accuracy"] > 0.9
    # Only the newest 3 checkpoints are kept, and no temporary files are left behind.
    assert sorted(p.name for p in (model.parents[1] / "ckpt").iterdir()) == [
        "ckpt-00000520.npz", "ckpt-00000560.npz", "ckpt-00000600.npz"]
    assert '"step": 600, "epoch": 6' in (model.parents[1] / "progress.json").read_text()


def test_sigterm_mid_epoch_then_resume_is_bit_identical(
        common: list[str], reference: Reference, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    proc = _start(TRAIN, common + SLOW_PACE + HALF_EPOCH_CHECKPOINTS, ckpt)
    # Mid-epoch 2 (its half-way checkpoint exists); the rest of the epoch takes another second.
    _wait_for((ckpt / "ckpt-00000150.npz").exists, proc)
    proc.send_signal(signal.SIGTERM)
    step = _interrupted(proc)
    assert STEPS_PER_EPOCH < step < 2 * STEPS_PER_EPOCH  # mid-epoch: the exact state was saved

    resumed = _run(TRAIN, common, ckpt, attempt=2)
    assert resumed.returncode == 0, resumed.stderr
    batch = step - STEPS_PER_EPOCH
    assert resumed.stdout.splitlines()[0] == (
        f"resuming from ckpt-{step:08d}.npz (epoch 1, batch {batch}, step {step}, attempt 2)")
    _assert_same_model(tmp_path / "out" / "model.npz", reference[0])


def test_reentrant_notice_file_then_from_checkpoint_is_bit_identical(
        common: list[str], reference: Reference, tmp_path: Path) -> None:
    ckpt, notice = tmp_path / "ckpt", tmp_path / "notice"
    proc = _start(REENTRANT, common + PACE + HALF_EPOCH_CHECKPOINTS, ckpt, SPOT_NOTICE_FILE=notice)
    _wait_for((ckpt / "ckpt-00000250.npz").exists, proc)  # past epoch 2, whatever the pace
    notice.touch()
    step = _interrupted(proc)
    assert step > 2 * STEPS_PER_EPOCH

    from_checkpoint = str(ckpt / f"ckpt-{step:08d}.npz")
    resumed = _run(REENTRANT, [*common, "--from-checkpoint", from_checkpoint], ckpt, attempt=2)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith(f"resuming from ckpt-{step:08d}.npz (epoch ")
    _assert_same_model(tmp_path / "out" / "model.npz", reference[0])


def test_fail_once_marker_fails_once_then_resumes(
        common: list[str], reference: Reference, tmp_path: Path) -> None:
    ckpt, marker = tmp_path / "ckpt", tmp_path / "failed-once"
    args = [*common, "--fail-at-epoch", "3", "--fail-once-marker", str(marker)]
    first = _run(TRAIN, args, ckpt)
    assert first.returncode not in (0, 143)
    assert "SimulatedFailure: simulated failure at the start of epoch 3" in first.stderr
    assert marker.exists()

    second = _run(TRAIN, args, ckpt, attempt=2)
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[0] == "resuming from ckpt-00000200.npz (epoch 2, step 200, attempt 2)"
    _assert_same_model(tmp_path / "out" / "model.npz", reference[0])


def test_resume_with_other_settings_is_refused(
        common: list[str], reference: Reference) -> None:
    ckpt = reference[0].parents[1] / "ckpt"
    result = _run(TRAIN, [*common, "--output", "refused.npz", "--lr", "0.01"], ckpt)
    assert result.returncode == 1
    assert "was saved with" in result.stderr


def test_resuming_from_every_step_is_bit_identical(tmp_path: Path) -> None:
    """In-process: save after every step (a partial last batch included), resume from each, compare."""
    path = mlp.make_dataset(tmp_path / "small.npz", seed=3, n_samples=300, n_features=6)
    d = mlp.load_dataset(path)
    x, y = d["x_train"], d["y_train"]  # 240 samples, batch 50: 5 batches, the last one of 40
    config = mlp.Config(seed=7, lr=0.05, momentum=0.9, batch_size=50, hidden=[8, 5])
    state = mlp.new_state(config, 6, 3)
    saved = []
    while state["epoch"] < 3:
        mlp.train_step(state, x, y)
        saved.append(tmp_path / f"s{state['step']}.npz")
        mlp.save_state(saved[-1], state)
    for checkpoint in saved:
        resumed = mlp.load_state(checkpoint)
        while resumed["epoch"] < 3:
            mlp.train_step(resumed, x, y)
        got, want = resumed["params"] + resumed["velocity"], state["params"] + state["velocity"]
        assert [a.tobytes() for a in got] == [a.tobytes() for a in want], checkpoint.name
