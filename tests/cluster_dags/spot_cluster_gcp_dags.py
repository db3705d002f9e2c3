"""DAGs run by the real Airflow cluster of the GCP reliability tests (``tests/test_cluster_scenarios.py``).

One single-task DAG per scenario, each a :class:`SpotTrainingOperator` on the GCP backend (the test's
in-process fake Compute Engine API, whose VM runner runs each startup script as a local process, and the
gcp-storage-emulator for GCS) running the real NumPy training script, paced with ``--min-epoch-seconds``.
The number of epochs can be changed per run with ``dag_run.conf["epochs"]``.

The cloud comes from variables the test harness sets for every Airflow process: ``SPOT_CLUSTER_GCP_ENDPOINT``
(the fake Compute API), ``SPOT_CLUSTER_GCP_PROJECT``, ``SPOT_CLUSTER_GCP_BUCKET``, ``SPOT_CLUSTER_GCP_CONN_ID``,
the connection's ``AIRFLOW_CONN_<ID>`` and ``STORAGE_EMULATOR_HOST``. Without ``SPOT_CLUSTER_GCP_ENDPOINT``
(e.g. in the local-backend or AWS cluster, which share this folder) the file defines no DAG. The dataset
lives under ``SPOT_CLUSTER_ROOT``, like the other cluster DAGs.
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
ENDPOINT = os.environ.get("SPOT_CLUSTER_GCP_ENDPOINT", "")
PROJECT = os.environ.get("SPOT_CLUSTER_GCP_PROJECT", "spot-project")
BUCKET = os.environ.get("SPOT_CLUSTER_GCP_BUCKET", "spot-cluster")
CONN_ID = os.environ.get("SPOT_CLUSTER_GCP_CONN_ID", "spot_gcp")
MACHINE_TYPE = "n1-standard-4"
ZONE = "us-central1-a"
IMAGE = "projects/debian-cloud/global/images/family/debian-12"


@dataclass(frozen=True)
class GcpClusterJob:
    dag_id: str
    epochs: int  # one epoch takes ~epoch_seconds: the job's length
    epoch_seconds: float = 1.0


JOBS = (
    GcpClusterJob("spot_cluster_gcp_triggerer_restart", epochs=25),
    GcpClusterJob("spot_cluster_gcp_mark_failed", epochs=300),
    GcpClusterJob("spot_cluster_gcp_sweep", epochs=300),
)


def build(job: GcpClusterJob) -> DAG:
    with DAG(dag_id=job.dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
             catchup=False, tags=["spot", "cluster-test", "gcp"]) as dag:
        SpotTrainingOperator(
            task_id="train",
            backend="gcp",
            conn_id=CONN_ID,
            command=[sys.executable, str(TRAIN), "--data", str(DATA),
                     "--epochs", f"{{{{ dag_run.conf.get('epochs', {job.epochs}) }}}}",
                     "--min-epoch-seconds", str(job.epoch_seconds), "--seed", "5"],
            checkpoint_uri=f"gs://{BUCKET}/{job.dag_id}/{{{{ run_id | replace(':', '_') }}}}/",
            checkpoint_pattern=CKPT_PATTERN,
            machine={"instance_types": [MACHINE_TYPE], "zones": [ZONE], "image": IMAGE},
            # The "image" is this Python environment: the agent is installed already.
            backend_options={"project_id": PROJECT, "api_endpoint": ENDPOINT, "python": sys.executable,
                             "agent_install": [], "wait_timeout": 60},
            poll_interval=1.0,
            sync_interval=1.0,
        )
    return dag


if ENDPOINT:
    for _job in JOBS:
        globals()[_job.dag_id] = build(_job)
