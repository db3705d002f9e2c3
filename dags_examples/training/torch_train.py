"""Plain PyTorch training loop that resumes bit-identically from any step (airflow_spot_provider.resumable.torch).

Checkpoints ``ckpt-<step>.pt`` go to $SPOT_CHECKPOINT_DIR every K steps and after each epoch; on an
interruption notice the run saves at the next step boundary and exits 143. The final weights are
written to ``model.pt`` there.

    python torch_train.py [--epochs 4] [--seed 0] [--checkpoint-every-steps 50] [--step-seconds 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a file: make `import torch_common` work

import torch
import torch_common
from torch.nn import functional
from torch.utils.data import DataLoader

from airflow_spot_provider import resumable
from airflow_spot_provider.resumable.torch import resume


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    torch_common.add_arguments(parser)
    args = parser.parse_args(argv)
    torch_common.deterministic(args.seed)
    train, val = torch_common.blobs(args.seed)
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True)
    model = torch_common.mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.epochs * len(loader))

    run = resume(model, optimizer, scheduler, every_n_steps=args.checkpoint_every_steps)  # the one line
    for epoch in run.epochs(args.epochs):
        for x, y in run.batches(loader):
            loss = functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            torch_common.pace(args.step_seconds)
        val_loss, accuracy = torch_common.evaluate(model, val)
        resumable.report_progress(step=run.step, epoch=epoch + 1, loss=val_loss, accuracy=accuracy)
        print(f"epoch {epoch + 1}/{args.epochs} step {run.step}: val loss {val_loss:.4f} accuracy {accuracy:.4f}",
              flush=True)

    with resumable.atomic_path(resumable.checkpoint_dir() / "model.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
