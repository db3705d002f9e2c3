"""Training frameworks on spot capacity: ``spot_torch_training``, ``spot_lightning_training`` and ``spot_hf_training``.

Each DAG runs one script of ``training/`` that adds one line of ``airflow_spot_provider.resumable`` to an ordinary
PyTorch loop, a Lightning ``Trainer.fit`` or a Hugging Face ``Trainer.train`` (see each DAG's doc). The training job
needs the framework's extra where it runs (``pip install 'airflow-spot-provider[torch|lightning|huggingface]'``);
this file imports no framework, so the DAGs parse without them. The local backend's simulated spot market reclaims
the first two attempts once their checkpoints reach steps 100 and 200: the first with a notice (the script saves
the step in flight and exits 143), the second with none (backup-save publishes the newest checkpoint left on the
disk). The third attempt finishes with the same model as an uninterrupted run. The operator's default
``checkpoint_pattern`` (the last number in a name) picks each framework's checkpoint names.
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

#: dag id -> (training script, tag, what the script does).
FRAMEWORKS = {
    "spot_torch_training": ("torch_train.py", "pytorch", """PyTorch: a plain training loop that resumes bit-identically.

``training/torch_train.py`` wraps its loop with ``airflow_spot_provider.resumable.torch`` (one ``resume(...)`` call,
then ``run.epochs()`` / ``run.batches()``): checkpoints (``ckpt-<step>.pt``) hold the model, optimizer, scheduler,
every RNG state and the position in the epoch."""),
    "spot_lightning_training": ("lightning_train.py", "lightning", """PyTorch Lightning: ``Trainer.fit`` resumes
bit-identically, even mid-epoch.

``training/lightning_train.py`` adds ``SaveOnNotice()`` to the trainer's callbacks, resumes with
``fit(ckpt_path=checkpoint_to_resume())`` and returns its training loader wrapped in a ``ResumableLoader``
(``airflow_spot_provider.resumable.lightning`` and ``.torch``); checkpoints are ``step=<step>.ckpt`` files."""),
    "spot_hf_training": ("hf_train.py", "huggingface", """Hugging Face ``Trainer``: ``train()`` resumes
bit-identically, even mid-epoch.

``training/hf_train.py`` fine-tunes a tiny BERT built from a config (nothing downloaded) with ``SaveOnNotice()`` in
its callbacks, ``output_dir=output_dir()`` and ``train(resume_from_checkpoint=resume_from_checkpoint())``
(``airflow_spot_provider.resumable.huggingface``); checkpoints are ``checkpoint-<step>/`` folders."""),
}

for dag_id, (script, tag, doc) in FRAMEWORKS.items():
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        tags=["spot", "training", "example", tag],
        doc_md=f"{doc}\n\n{__doc__}",
    ) as dag:
        SpotTrainingOperator(
            task_id="train",
            command=["python", str(TRAINING / script), "--epochs", "4", "--checkpoint-every-steps", "50",
                     "--step-seconds", "0.005"],
            checkpoint_uri=f"file://{DEMO_ROOT}/checkpoints/{{{{ dag.dag_id }}}}/{{{{ run_id | replace(':', '_') }}}}/",
            max_preemptions=5,
            sync_interval=2.0,
            poll_interval=0.5,
            backend_options={"preempt_after": [{"at_step": 100}, {"at_step": 200, "notice_seconds": 0}],
                             "notice_seconds": 5.0},
        )
    globals()[dag_id] = dag
