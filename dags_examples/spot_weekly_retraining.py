"""Weekly retraining on spot capacity: prepare data → train on a spot VM → evaluate.

The training step survives preemptions: the local backend's simulated spot market reclaims the
first attempts (``SPOT_DEMO_PREEMPT_AFTER`` seconds after each start, default ``6,6``: two
preemptions; the second comes with no time to act, as happens in the field), the operator
backup-saves what the dead attempt wrote, relaunches from the latest checkpoint, and the task
finishes in its first try. On a cloud, switch ``backend`` to ``"aws"`` or ``"gcp"``, ``checkpoint_uri`` to
``s3://`` / ``gs://``, and give ``machine`` (types, zones, image), ``conn_id`` and the backend options
(see docs/backends/aws.md and docs/backends/gcp.md).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import DAG, ObjectStoragePath, task

from airflow_spot_provider.operators.spot_training import SpotTrainingOperator

TRAINING = Path(__file__).parent / "training"
DEMO_ROOT = Path(os.environ.get("SPOT_DEMO_ROOT") or Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser()
                 / "spot-demo")
_AFTER = [float(s) for s in os.environ.get("SPOT_DEMO_PREEMPT_AFTER", "6,6").split(",") if s.strip()]
# The first preemption gives the script 3 s to save; the later ones none (only backup-save helps).
PREEMPT_AFTER = [after if i == 0 else {"after": after, "notice_seconds": 0} for i, after in enumerate(_AFTER)]
EPOCHS = os.environ.get("SPOT_DEMO_EPOCHS", "12")
EPOCH_SECONDS = os.environ.get("SPOT_DEMO_EPOCH_SECONDS", "1.0")
CHECKPOINTS = f"file://{DEMO_ROOT}/checkpoints/{{{{ dag.dag_id }}}}/{{{{ run_id | replace(':', '_') }}}}/"

with DAG(
    dag_id="spot_weekly_retraining",
    schedule="@weekly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["spot", "training", "example"],
    doc_md=__doc__,
):

    @task
    def prepare_data(ds: str | None = None) -> str:
        import sys

        sys.path.insert(0, str(TRAINING))
        import mlp

        path = DEMO_ROOT / "data" / f"{ds}.npz"
        mlp.make_dataset(path, seed=0)
        return str(path)

    data = prepare_data()

    train = SpotTrainingOperator(
        task_id="train",
        backend="local",
        command=["python", str(TRAINING / "train.py"), "--data", "{{ ti.xcom_pull(task_ids='prepare_data') }}",
                 "--epochs", EPOCHS,
                 "--min-epoch-seconds", EPOCH_SECONDS, "--seed", "7"],
        checkpoint_uri=CHECKPOINTS,
        checkpoint_pattern=r"^ckpt-(?P<step>\d{8,})\.npz$",
        machine={"instance_types": ["local.gpu"]},
        max_preemptions=5,
        sync_interval=4.0,
        poll_interval=0.5,
        backend_options={"preempt_after": PREEMPT_AFTER, "notice_seconds": 3.0},
        retries=1,
        retry_delay=timedelta(seconds=5),
    )

    @task
    def evaluate(summary: dict, data_path: str) -> dict:
        import shutil
        import sys
        import tempfile

        sys.path.insert(0, str(TRAINING))
        import mlp

        model = ObjectStoragePath(summary["checkpoint_uri"]) / "model.npz"
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "model.npz"
            with model.open("rb") as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst)
            result = mlp.evaluate(local, data_path)
        totals = summary["totals"]
        print(f"validation accuracy {result['accuracy']:.4f}; {totals['attempts']} attempts, "
              f"{totals['preemptions']} preemptions, spot cost ${totals['cost']:.6f}, savings {totals['savings_pct']}%")
        return {**result, **totals}

    data >> train
    evaluate(train.output, data)


# The reentrant style: the script never looks for checkpoints itself; the operator appends
# `--from-checkpoint <path>` only when it restored one (Spell's `--from-checkpoint` convention).
with DAG(
    dag_id="spot_reentrant_training",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    tags=["spot", "training", "example"],
):

    @task
    def make_data() -> str:
        import sys

        sys.path.insert(0, str(TRAINING))
        import mlp

        path = DEMO_ROOT / "data" / "reentrant.npz"
        mlp.make_dataset(path, seed=0)
        return str(path)

    reentrant_data = make_data()
    reentrant = SpotTrainingOperator(
        task_id="train",
        command=["python", str(TRAINING / "train_reentrant.py"), "--data",
                 "{{ ti.xcom_pull(task_ids='make_data') }}", "--min-epoch-seconds", EPOCH_SECONDS],
        resume_args=["--from-checkpoint", "{resume_from}"],
        checkpoint_uri=f"file://{DEMO_ROOT}/checkpoints/reentrant/{{{{ run_id | replace(':', '_') }}}}/",
        checkpoint_pattern=r"^ckpt-(?P<step>\d{8,})\.npz$",
        sync_interval=1.0,
        poll_interval=0.5,
        backend_options={"preempt_after": [2.0], "notice_seconds": 1.0},
    )
    reentrant_data >> reentrant
