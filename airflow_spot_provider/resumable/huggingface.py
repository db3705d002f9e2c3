"""Hugging Face ``Trainer``: save on an interruption notice, stop, and resume from the newest checkpoint.

::

    args = TrainingArguments(output_dir=output_dir(), save_strategy="steps", save_steps=50, ...)
    trainer = Trainer(model=model, args=args, ..., callbacks=[SaveOnNotice()])
    trainer.train(resume_from_checkpoint=resume_from_checkpoint())

The Trainer writes a ``checkpoint-<step>/`` folder file by file. With :func:`output_dir` it writes it in
a hidden folder of the checkpoint directory (never synced), and :class:`SaveOnNotice` moves it into the
checkpoint directory once it is whole: a VM stopped in the middle of a save leaves no half checkpoint
for the next attempt to resume from. The Trainer itself resumes mid-epoch exactly (it stores the RNG
states and skips the batches already trained).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from airflow_spot_provider.resumable import (
    INTERRUPTED_EXIT_CODE,
    checkpoint_dir,
    install_interruption_handler,
    latest_checkpoint,
    resume_from,
)
from airflow_spot_provider.resumable._prune import prune_checkpoints

#: The Trainer's checkpoint folders; the operator's default ``checkpoint_pattern`` picks them too.
CHECKPOINT_PATTERN = r"^checkpoint-(?P<step>\d+)$"
#: Where the Trainer writes (a hidden name: the agent does not sync it).
STAGING = ".trainer-output"


def output_dir() -> str:
    """The ``TrainingArguments.output_dir`` to use: a hidden folder inside the checkpoint directory."""
    return str(checkpoint_dir() / STAGING)


def resume_from_checkpoint() -> str | None:
    """The ``resume_from_checkpoint`` for ``Trainer.train``: ``SPOT_RESUME_FROM``, else the newest
    ``checkpoint-<step>`` in the checkpoint directory, else None (a fresh start)."""
    path = resume_from() or latest_checkpoint(pattern=CHECKPOINT_PATTERN)
    return str(path) if path is not None else None


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as handle:
                os.fsync(handle.fileno())


class SaveOnNotice(TrainerCallback):
    """On an interruption notice: have the Trainer save ``checkpoint-<step>`` after the optimizer step in
    flight (``should_save``) and stop (``should_training_stop``), then exit with
    :data:`~airflow_spot_provider.resumable.INTERRUPTED_EXIT_CODE` when ``train()`` ends.

    Also moves each checkpoint the Trainer saved under :func:`output_dir` into the checkpoint directory
    (a rename: it appears whole), and applies ``save_total_limit`` there, never removing the best one.
    """

    def __init__(self) -> None:
        self.notice = install_interruption_handler()  # now: a SIGTERM before train() must not kill the script
        self.interrupted = False

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        if self.notice.requested and not self.interrupted:
            self.interrupted = True
            control.should_save = control.should_training_stop = True
            control.should_evaluate = False  # no evaluation in the grace period (and save_strategy="best" saves)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        if self.interrupted:  # saved at the step already: no second save or half-epoch evaluation
            control.should_save = control.should_evaluate = False

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        staged = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if args.should_save and Path(args.output_dir) == Path(output_dir()) and staged.is_dir():
            self._publish(args, state, staged)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        if self.interrupted:
            print(f"interruption notice: saved checkpoint-{state.global_step} at step {state.global_step} "
                  f"(epoch {state.epoch:.2f})", flush=True)
            raise SystemExit(INTERRUPTED_EXIT_CODE)  # train() did not finish: the script must not go on

    def _publish(self, args: TrainingArguments, state: TrainerState, staged: Path) -> None:
        target = checkpoint_dir() / staged.name
        if state.best_model_checkpoint == str(staged):  # keep load_best_model_at_end working after the move
            state.best_model_checkpoint = str(target)
            state.save_to_json(str(staged / "trainer_state.json"))
        _fsync_tree(staged)  # the files are on disk before the name is
        if target.exists():  # saved again at the same step (an epoch-end save): the newer one wins
            shutil.rmtree(target)
        os.replace(staged, target)
        best = {Path(state.best_model_checkpoint)} if state.best_model_checkpoint else set()
        prune_checkpoints(target.parent, CHECKPOINT_PATTERN, args.save_total_limit or 0, state.global_step, best)
