"""DAGs for the end-to-end tests, one per JSON spec the tests write (dag.test() needs a DAG file)."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import DAG, task

from airflow_spot_provider.operators.spot_training import SpotTrainingOperator
from airflow_spot_provider.operators.sweep import SpotSweepOperator

SPECS = Path(os.environ.get("SPOT_E2E_SPECS", "/nonexistent"))


def build(spec: dict) -> DAG:
    out = Path(spec["out"])
    with DAG(dag_id=spec["dag_id"], schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
        if "sweep" in spec:
            train = SpotSweepOperator(task_id="train", **spec["sweep"])
        else:
            train = SpotTrainingOperator(task_id="train", retry_delay=timedelta(seconds=1), **spec["operator"])

        @task
        def collect(summary: dict) -> None:
            out.write_text(json.dumps(summary))

        collect(train.output)
    return dag


for path in sorted(SPECS.glob("*.json")) if SPECS.is_dir() else []:
    spec = json.loads(path.read_text())
    globals()[spec["dag_id"]] = build(spec)
