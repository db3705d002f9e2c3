"""PyTorch Lightning training that resumes bit-identically, even mid-epoch (airflow_spot_provider.resumable.lightning).

``ModelCheckpoint`` writes ``step=<step>.ckpt`` to $SPOT_CHECKPOINT_DIR every K steps; ``SaveOnNotice``
saves at the end of the batch in flight on an interruption notice and exits 143; the training loader
is a ``ResumableLoader``, so Lightning stores its position and RNG state in each checkpoint. The final
weights are written to ``model.pt`` there.

    python lightning_train.py [--epochs 4] [--seed 0] [--checkpoint-every-steps 50] [--step-seconds 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a file: make `import torch_common` work

import lightning.pytorch as pl
import torch
import torch_common
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.nn import functional
from torch.utils.data import DataLoader

from airflow_spot_provider import resumable
from airflow_spot_provider.resumable.lightning import SaveOnNotice, checkpoint_to_resume
from airflow_spot_provider.resumable.torch import ResumableLoader


class Classifier(pl.LightningModule):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.args = args
        self.train_set, self.val_set = torch_common.blobs(args.seed)
        self.net = torch_common.mlp()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return functional.cross_entropy(self.net(x), y)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        torch_common.pace(self.args.step_seconds)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", functional.cross_entropy(logits, y))
        self.log("val_accuracy", (logits.argmax(dim=1) == y).float().mean())

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            metrics = {k: v.item() for k, v in self.trainer.callback_metrics.items()}
            resumable.report_progress(step=self.global_step, epoch=self.current_epoch + 1,
                                      loss=metrics["val_loss"], accuracy=metrics["val_accuracy"])
            print(f"epoch {self.current_epoch + 1}/{self.args.epochs} step {self.global_step}: "
                  f"val loss {metrics['val_loss']:.4f} accuracy {metrics['val_accuracy']:.4f}", flush=True)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.args.lr)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.args.lr,
                                                        total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def train_dataloader(self) -> ResumableLoader:
        return ResumableLoader(DataLoader(self.train_set, batch_size=self.args.batch_size, shuffle=True))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    torch_common.add_arguments(parser)
    args = parser.parse_args(argv)
    torch_common.deterministic(args.seed)
    model = Classifier(args)
    checkpoints = ModelCheckpoint(dirpath=resumable.checkpoint_dir(), filename="{step:08d}",
                                  every_n_train_steps=args.checkpoint_every_steps)
    trainer = pl.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, deterministic=True, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[checkpoints, SaveOnNotice()])
    trainer.fit(model, ckpt_path=checkpoint_to_resume())

    with resumable.atomic_path(resumable.checkpoint_dir() / "model.pt") as tmp:
        torch.save(model.net.state_dict(), tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
