"""Shared by the PyTorch, Lightning and Hugging Face examples: synthetic data, a small model, options, pacing."""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.nn import functional
from torch.utils.data import TensorDataset

N_FEATURES = 16
N_CLASSES = 4


def blobs(seed: int, n_train: int = 3072, n_val: int = 512) -> tuple[TensorDataset, TensorDataset]:
    """Overlapping Gaussian blobs, one per class, two features bent by a sine (validation accuracy ends near 94 %)."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(N_CLASSES, N_FEATURES, generator=generator) * 0.8
    y = torch.randint(0, N_CLASSES, (n_train + n_val,), generator=generator)
    x = centers[y] + torch.randn(n_train + n_val, N_FEATURES, generator=generator)
    x[:, :2] = torch.sin(2.0 * x[:, :2]) * x[:, 2:4]
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])


def mlp(hidden: int = 64, dropout: float = 0.1) -> nn.Module:
    """Dropout makes every step draw from the torch RNG: a resume that lost the RNG state would show."""
    return nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.Tanh(), nn.Dropout(dropout),
                         nn.Linear(hidden, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, N_CLASSES))


@torch.no_grad()
def evaluate(model: nn.Module, dataset: TensorDataset) -> tuple[float, float]:
    """(loss, accuracy) on a whole split, in eval mode (no dropout: no RNG drawn)."""
    was_training = model.training
    model.eval()
    x, y = dataset.tensors
    logits = model(x)
    model.train(was_training)
    return functional.cross_entropy(logits, y).item(), (logits.argmax(dim=1) == y).float().mean().item()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=4, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="data, init and shuffle seed (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="default: %(default)s")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default: %(default)s)")
    parser.add_argument("--checkpoint-every-steps", type=int, default=50, metavar="K", help="default: %(default)s")
    parser.add_argument("--step-seconds", type=float, default=0.0, metavar="X",
                        help="demo pacing: sleep X seconds after each step, so that a simulated preemption "
                             "lands mid-training (default: 0)")


def deterministic(seed: int) -> None:
    """One thread (the reductions' order, and polite on a shared machine) and deterministic kernels."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)


def pace(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)
