"""DAGs run by the real Airflow cluster of the AWS reliability tests (``tests/test_cluster_scenarios.py``,
``tests/test_cluster_aws.py``).

One single-task DAG per scenario, each a :class:`SpotTrainingOperator` on the AWS backend (EC2 and S3
of the test's in-process moto, whose VM runner runs the user data as local processes) running the real
NumPy training script, paced with ``--min-epoch-seconds``. The number of epochs can be changed per run
with ``dag_run.conf["epochs"]``.

The cloud comes from variables the test harness sets for every Airflow process: ``SPOT_CLUSTER_AWS_AMI``
(an AMI id of the fake; the machine image is checked at parse time, so it cannot come from the run's conf),
``SPOT_CLUSTER_AWS_BUCKET``, ``SPOT_CLUSTER_AWS_CONN_ID`` and the connection's ``AIRFLOW_CONN_<ID>``.
Without ``SPOT_CLUSTER_AWS_AMI`` (e.g. in the local-backend cluster, which shares this folder) the file
defines no DAG. The dataset lives under ``SPOT_CLUSTER_ROOT``, like the local-backend cluster DAGs.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pendulum
from airflow.sdk import DAG

from airflow_spot_provider.operators.spot_training import SpotTrainingOperator

TRAIN = Path(__file__).resolve().parents[2] / "dags_examples" / "training" / "train.py"
ROOT = Path(os.environ.get("SPOT_CLUSTER_ROOT")
            or Path(os.environ.get("AIRFLOW_HOME") or "~/airflow").expanduser() / "spot-cluster")
DATA = ROOT / "data.npz"
CKPT_PATTERN = r"^ckpt-(?P<step>\d{8,})\.npz$"
AMI = os.environ.get("SPOT_CLUSTER_AWS_AMI", "")
BUCKET = os.environ.get("SPOT_CLUSTER_AWS_BUCKET", "spot-cluster")
CONN_ID = os.environ.get("SPOT_CLUSTER_AWS_CONN_ID", "spot_aws")
REGION = "us-east-1"


@dataclass(frozen=True)
class AwsClusterJob:
    dag_id: str
    epochs: int  # one epoch takes ~epoch_seconds: the job's length
    epoch_seconds: float = 1.0
    #: The VMs' Python is ROOT/held-python (written by the test): it holds a backup-save until the test lets it go.
    held_backup_save: bool = False


JOBS = (
    AwsClusterJob("spot_cluster_aws_triggerer_restart", epochs=25),
    AwsClusterJob("spot_cluster_aws_ledger_cleared", epochs=12, held_backup_save=True),
    AwsClusterJob("spot_cluster_aws_mark_failed", epochs=300),
    AwsClusterJob("spot_cluster_aws_sweep", epochs=300),
)


def build(job: AwsClusterJob) -> DAG:
    with DAG(dag_id=job.dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
             catchup=False, tags=["spot", "cluster-test", "aws"]) as dag:
        SpotTrainingOperator(
            task_id="train",
            backend="aws",
            conn_id=CONN_ID,
            command=[sys.executable, str(TRAIN), "--data", str(DATA),
                     "--epochs", f"{{{{ dag_run.conf.get('epochs', {job.epochs}) }}}}",
                     "--min-epoch-seconds", str(job.epoch_seconds), "--seed", "5"],
            checkpoint_uri=f"s3://{BUCKET}/{job.dag_id}/{{{{ run_id | replace(':', '_') }}}}/",
            checkpoint_pattern=CKPT_PATTERN,
            machine={"instance_types": ["m5.large"], "zones": [f"{REGION}a"], "image": AMI},
            # The "image" is this Python environment: the agent is installed already.
            backend_options={"region_name": REGION, "agent_install": [],
                             "python": str(ROOT / "held-python") if job.held_backup_save else sys.executable,
                             "wait_timeout": 60},
            poll_interval=1.0,
            sync_interval=1.0,
        )
    return dag


if AMI:
    for _job in JOBS:
        globals()[_job.dag_id] = build(_job)
