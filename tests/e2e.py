"""Helpers for end-to-end tests: build a small DAG around SpotTrainingOperator and run it with dag.test()."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .conftest import TRAINING

CKPT_PATTERN = r"^ckpt-(?P<step>\d{8,})\.npz$"


def train_command(data: Path, epochs: int = 6, epoch_seconds: float = 0.0, extra: list[str] | None = None):
    return [sys.executable, str(TRAINING / "train.py"), "--data", str(data), "--epochs", str(epochs),
            "--min-epoch-seconds", str(epoch_seconds), "--seed", "3", *(extra or [])]


def run_job(dag_id: str, tmp: Path, command: list[str], **operator_kwargs: Any) -> dict[str, Any]:
    """Run a one-task DAG (plus a collector of the XCom summary) with dag.test()."""
    return run_dag({"dag_id": dag_id, "operator": {
        "command": command, "checkpoint_uri": f"file://{tmp}/store/", "checkpoint_pattern": CKPT_PATTERN,
        "poll_interval": 0.2, "sync_interval": 1.0, **operator_kwargs}}, tmp)


def run_dag(spec: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Write the DAG's spec where tests/dags/spot_e2e_dags.py reads it, then run it with dag.test()."""
    import importlib

    dag_id = spec["dag_id"]
    out = tmp / f"{dag_id}.summary.json"
    spec = {**spec, "out": str(out)}
    specs = Path(os.environ["SPOT_E2E_SPECS"])
    specs.mkdir(exist_ok=True)
    (specs / f"{dag_id}.json").write_text(json.dumps(spec))
    dags = importlib.reload(importlib.import_module("tests.dags.spot_e2e_dags"))
    run = getattr(dags, dag_id).test()
    ti = run.get_task_instance("train")
    summary = json.loads(out.read_text()) if out.exists() else None
    return {"state": str(ti.state), "try_number": ti.try_number, "summary": summary, "run": run}


def baseline_model(tmp: Path, command: list[str]) -> Path:
    """The same training, uninterrupted, outside any spot machinery."""
    ckpt = tmp / "baseline-ckpt"
    subprocess.run(command, check=True, capture_output=True, cwd=tmp, env={"SPOT_CHECKPOINT_DIR": str(ckpt),
                                                                         "PATH": "/usr/bin:/bin"})
    return ckpt / "model.npz"


def assert_bit_identical(a: Path, b: Path) -> None:
    with np.load(a) as left, np.load(b) as right:
        assert sorted(left.files) == sorted(right.files)
        for name in left.files:
            assert left[name].dtype == right[name].dtype
            assert left[name].tobytes() == right[name].tobytes(), name
