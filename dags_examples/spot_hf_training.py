"""Hugging Face ``Trainer`` on spot capacity: ``train()`` resumes bit-identically, even mid-epoch.

``training/hf_train.py`` fine-tunes a tiny BERT built from a config (nothing downloaded) with
``SaveOnNotice()`` in its callbacks, ``output_dir=output_dir()`` and
``train(resume_from_checkpoint=resume_from_checkpoint())`` (``airflow_spot_provider.resumable.huggingface``).

The training job needs the ``huggingface`` extra where it runs (``pip install 'airflow-spot-provider[huggingface]'``);
this file imports no framework, so the DAG parses without it. The local backend's simulated spot market
reclaims the first two attempts once their checkpoints reach steps 100 and 200: the first with a notice
(the script saves the step in flight and exits 143), the second with none (backup-save publishes the
newest checkpoint left on the disk). The third attempt finishes with the same model as an uninterrupted
run. The operator's default ``checkpoint_pattern`` (the last number in a name) picks its ``checkpoint-<step>/`` folders.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import DAG

from airflow_spot_provider.operators.spot_training import SpotTrainingOperator

TRAINING = Path(__file__).parent / "training"
DEMO_ROOT = Path(os.environ.get("SPOT_DEMO_ROOT") or Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser()
                 / "spot-demo")

with DAG(
    dag_id="spot_hf_training",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    tags=["spot", "training", "example", "huggingface"],
    doc_md=__doc__,
):
    SpotTrainingOperator(
        task_id="train",
        command=["python", str(TRAINING / "hf_train.py"), "--epochs", "4", "--checkpoint-every-steps", "50",
                 "--step-seconds", "0.005"],
        checkpoint_uri=f"file://{DEMO_ROOT}/checkpoints/{{{{ dag.dag_id }}}}/{{{{ run_id | replace(':', '_') }}}}/",
        max_preemptions=5,
        sync_interval=2.0,
        poll_interval=0.5,
        backend_options={"preempt_after": [{"at_step": 100}, {"at_step": 200, "notice_seconds": 0}],
                         "notice_seconds": 5.0},
    )
