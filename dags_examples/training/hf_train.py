"""Hugging Face Trainer fine-tuning that resumes bit-identically, even mid-epoch (resumable.huggingface).

A tiny BERT built from a config (no download) learns a synthetic sequence task: is token 1 more frequent
than token 2? The Trainer saves ``checkpoint-<step>/`` every K steps; ``SaveOnNotice`` moves each one
into $SPOT_CHECKPOINT_DIR once it is whole, saves at the next step on an interruption notice and exits
143. The final model is saved to ``model/`` there.

    python hf_train.py [--epochs 4] [--seed 0] [--checkpoint-every-steps 50] [--step-seconds 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a file: make `import torch_common` work

import torch
import torch_common
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.utils import logging as hf_logging

from airflow_spot_provider import resumable
from airflow_spot_provider.resumable.huggingface import SaveOnNotice, output_dir, resume_from_checkpoint

VOCAB = 32
LENGTH = 16


class Sequences(torch.utils.data.Dataset):
    """Random token sequences; the label says whether token 1 occurs more often than token 2."""

    def __init__(self, seed: int, size: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 6, (size, LENGTH), generator=generator)
        self.ids = torch.where(torch.rand(size, LENGTH, generator=generator) < 0.5, self.ids,
                               torch.randint(6, VOCAB, (size, LENGTH), generator=generator))
        self.labels = ((self.ids == 1).sum(dim=1) > (self.ids == 2).sum(dim=1)).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.labels[index]}


class Pace(TrainerCallback):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_end(self, args, state, control, **kwargs) -> None:
        torch_common.pace(self.seconds)


class Progress(TrainerCallback):
    """The evaluation at each epoch's end goes to the ledger (the Trainer prints it too)."""

    def on_evaluate(self, args, state, control, metrics=None, **kwargs) -> None:
        resumable.report_progress(step=state.global_step, epoch=round(state.epoch or 0), loss=metrics["eval_loss"],
                                  accuracy=metrics["eval_accuracy"])


def accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    torch_common.add_arguments(parser)
    args = parser.parse_args(argv)
    torch_common.deterministic(args.seed)
    hf_logging.disable_progress_bar()  # a bar per saved file clutters the task log
    set_seed(args.seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=LENGTH, num_labels=2)
    model = BertForSequenceClassification(config)
    training = TrainingArguments(
        output_dir=output_dir(), num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=256, learning_rate=args.lr, warmup_steps=20, save_strategy="steps",
        save_steps=args.checkpoint_every_steps, save_total_limit=3, eval_strategy="epoch", logging_strategy="no",
        seed=args.seed, data_seed=args.seed, full_determinism=True, use_cpu=True, report_to="none",
        disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=training, train_dataset=Sequences(args.seed, 3072),
                      eval_dataset=Sequences(args.seed + 1, 512), compute_metrics=accuracy,
                      callbacks=[SaveOnNotice(), Pace(args.step_seconds), Progress()])
    trainer.train(resume_from_checkpoint=resume_from_checkpoint())
    trainer.save_model(str(resumable.checkpoint_dir() / "model"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
