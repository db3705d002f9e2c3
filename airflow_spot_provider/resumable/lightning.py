"""PyTorch Lightning: save on an interruption notice, stop, and resume from the newest checkpoint.

::

    trainer = L.Trainer(..., callbacks=[ModelCheckpoint(dirpath=checkpoint_dir(), filename="{step:08d}",
                                                         every_n_train_steps=50), SaveOnNotice()])
    trainer.fit(model, ckpt_path=checkpoint_to_resume())

For an exact resume in the middle of an epoch, return the training loader wrapped in
:class:`~airflow_spot_provider.resumable.torch.ResumableLoader`: Lightning then stores its position and
RNG state in every checkpoint (a plain ``DataLoader`` restarts the interrupted epoch's data from its
beginning).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from airflow_spot_provider.resumable import (
    INTERRUPTED_EXIT_CODE,
    atomic_path,
    checkpoint_dir,
    install_interruption_handler,
    latest_checkpoint,
    resume_from,
)

#: ``.ckpt`` files by the last number in their name (``step=00000200.ckpt``, ``epoch=3-step=200.ckpt``),
#: the same rule as the operator's default ``checkpoint_pattern``.
CHECKPOINT_PATTERN = r"(?P<step>\d+)\D*\.ckpt$"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's default checkpoint writer, but a local checkpoint appears under its name only once whole.

    (Lightning writes to the system temporary directory and moves the file: a copy, not a rename, when
    that is another file system, so a VM stopped mid-copy would leave a truncated checkpoint behind.)
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


class SaveOnNotice(Callback):
    """On an interruption notice: save ``step=<global step>.ckpt`` at the end of the batch in flight and exit
    with :data:`~airflow_spot_provider.resumable.INTERRUPTED_EXIT_CODE`.

    At the last batch of an epoch it saves at the end of the epoch instead (after validation), where
    Lightning's own epoch-end checkpoints are taken. It also makes every checkpoint the trainer writes
    to a local path atomic (:class:`AtomicCheckpointIO`, when the strategy uses the default writer).
    """

    def __init__(self, dirpath: str | Path | None = None) -> None:
        self.dirpath = Path(dirpath) if dirpath is not None else checkpoint_dir()
        self.notice = install_interruption_handler()  # now: a SIGTERM before fit() must not kill the script

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # fit() installs Lightning's SIGTERM handler, which ends training with exit code 0 (a finished task)
        # and may do so in the middle of validation, before anything is saved: take the signal back.
        if threading.current_thread() is threading.main_thread():  # (where Lightning installs its own)
            signal.signal(signal.SIGTERM, self.notice._on_signal)
        # Lightning drops the loaders' saved positions when the train loader was built before the checkpoint
        # was restored (configure_optimizers reading trainer.estimated_stepping_batches): Lightning issue
        # 20550. Apply them now; a ResumableLoader reads its state at the first batch, which is still ahead.
        fit_loop = trainer.fit_loop
        pending = getattr(fit_loop, "_combined_loader_states_to_load", None)
        if pending and getattr(fit_loop, "_combined_loader", None) is not None:
            fit_loop._combined_loader._load_state_dicts(pending)
            fit_loop._combined_loader_states_to_load = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._save_and_exit_on_notice(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save_and_exit_on_notice(trainer)

    def _save_and_exit_on_notice(self, trainer: pl.Trainer) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.notice.requested, all=False):  # any rank noticed
            return
        path = self.dirpath / f"step={trainer.global_step:08d}.ckpt"
        trainer.save_checkpoint(path)
        print(f"interruption notice: saved {path.name} at step {trainer.global_step} "
              f"(epoch {trainer.current_epoch})", flush=True)
        raise SystemExit(INTERRUPTED_EXIT_CODE)  # Lightning tears down (on_exception hooks) and re-raises


def checkpoint_to_resume(directory: str | Path | None = None) -> str | None:
    """The ``ckpt_path`` for ``Trainer.fit``: ``SPOT_RESUME_FROM``, else the newest ``.ckpt`` in the checkpoint
    directory (or ``directory``), else None (a fresh start)."""
    path = (resume_from() if directory is None else None) or latest_checkpoint(directory, CHECKPOINT_PATTERN)
    return str(path) if path is not None else None
