"""DAGs run by the real Airflow cluster of the reliability tests (``tests/test_cluster_scenarios.py``,
``tests/test_cluster_reliability.py``, ``tests/test_ui.py``).

One single-task DAG per scenario, each a :class:`SpotTrainingOperator` on the local backend running
the real NumPy training script, paced with ``--min-epoch-seconds`` so a job takes long enough for
the test to crash, freeze or mark things while it runs. The number of epochs can be changed per run
with ``dag_run.conf["epochs"]``. The local backend's state directory comes from
``AIRFLOW_SPOT_LOCAL_DIR`` and the dataset / checkpoints live under ``SPOT_CLUSTER_ROOT``, both set
by the test harness for every Airflow process.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG

from airflow_spot_provider.operators.spot_training import SpotTrainingOperator

TRAIN = Path(__file__).resolve().parents[2] / "dags_examples" / "training" / "train.py"
GATED = Path(__file__).resolve().parent / "gated_job.py"
ROOT = Path(os.environ.get("SPOT_CLUSTER_ROOT")
            or Path(os.environ.get("AIRFLOW_HOME") or "~/airflow").expanduser() / "spot-cluster")
DATA = ROOT / "data.npz"
CKPT_PATTERN = r"^ckpt-(?P<step>\d{8,})\.npz$"


@dataclass(frozen=True)
class ClusterJob:
    dag_id: str
    epochs: int  # one epoch takes ~epoch_seconds: the job's length
    epoch_seconds: float = 1.0
    retries: int = 0
    operator: dict[str, Any] = field(default_factory=dict)
    #: Run :mod:`gated_job` instead of the training: it ends when the test creates ROOT/gates/<run_id>.
    gated: bool = False


JOBS = (
    ClusterJob("spot_cluster_triggerer_restart", epochs=20),
    ClusterJob("spot_cluster_triggerer_ha", epochs=0, gated=True),
    # The VM boots for 10 s (state pending) while the launch call waits for it: the window the test kills in.
    ClusterJob("spot_cluster_worker_crash", epochs=15, retries=1, operator={"backend_options": {"boot_seconds": 10}}),
    ClusterJob("spot_cluster_mark_failed", epochs=300),
    ClusterJob("spot_cluster_deferral_timeout", epochs=300, operator={"job_timeout": 8}),
    ClusterJob("spot_cluster_sweep", epochs=300),
    # The UI tests (tests/test_ui.py) preempt it twice, with a notice and without one. It syncs only on a notice or
    # at its end, so the second preemption leaves checkpoints on the disk for the backup-save.
    ClusterJob("spot_cluster_ui_preempted", epochs=40, operator={"sync_interval": 3600.0,
                                                                 "backend_options": {"notice_seconds": 3.0}}),
    ClusterJob("spot_cluster_ui_running", epochs=0, gated=True),
    # The UI tests rehearse preemptions of it (the API, then the tab's button): no other test looks at it.
    ClusterJob("spot_cluster_ui_rehearsed", epochs=0, gated=True),
)


def build(job: ClusterJob) -> DAG:
    with DAG(dag_id=job.dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
             catchup=False, tags=["spot", "cluster-test"]) as dag:
        SpotTrainingOperator(
            task_id="train",
            backend="local",
            command=[sys.executable, str(GATED), f"{ROOT}/gates/{{{{ run_id | replace(':', '_') }}}}"] if job.gated
            else [sys.executable, str(TRAIN), "--data", str(DATA),
                  "--epochs", f"{{{{ dag_run.conf.get('epochs', {job.epochs}) }}}}",
                  "--min-epoch-seconds", str(job.epoch_seconds), "--seed", "5"],
            checkpoint_uri=f"file://{ROOT}/checkpoints/{job.dag_id}/{{{{ run_id | replace(':', '_') }}}}/",
            checkpoint_pattern=CKPT_PATTERN,
            retries=job.retries,
            retry_delay=timedelta(seconds=1),
            **{"poll_interval": 1.0, "sync_interval": 1.0, **job.operator},
        )
    return dag


for _job in JOBS:
    globals()[_job.dag_id] = build(_job)
