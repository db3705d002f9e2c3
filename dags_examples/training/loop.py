"""The training loop shared by train.py and train_reentrant.py: checkpoints, notice handling, pacing."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import mlp

from airflow_spot_provider import resumable

#: Our checkpoint names only, so unrelated files in the checkpoint directory are never picked or deleted.
CHECKPOINT_PATTERN = r"^ckpt-(?P<step>\d{8,})\.npz$"
KEEP_CHECKPOINTS = 3
MOMENTUM = 0.9


class SimulatedFailure(RuntimeError):
    """Raised by ``--fail-at-epoch``: stands in for a bug in user code."""


def add_arguments(parser: argparse.ArgumentParser, default_epochs: int) -> None:
    parser.add_argument("--data", required=True,
                        help="dataset .npz (write one with: python mlp.py make-dataset PATH)")
    parser.add_argument("--output", help="final model .npz (params only), relative to the cwd; default: model.npz "
                        "in the checkpoint directory, so it is synced to the checkpoint store with the checkpoints")
    parser.add_argument("--epochs", type=int, default=default_epochs, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="init and shuffle seed (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="default: %(default)s")
    parser.add_argument("--lr", type=float, default=0.05,
                        help="SGD learning rate, momentum 0.9 (default: %(default)s)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64], metavar="N",
                        help="hidden layer sizes, e.g. --hidden 64 32 (default: 64)")
    parser.add_argument("--checkpoint-every-steps", type=int, default=0, metavar="K",
                        help="also checkpoint every K steps (default: only at the end of each epoch)")
    parser.add_argument("--min-epoch-seconds", type=float, default=0.0, metavar="X",
                        help="demo pacing: stretch each epoch to at least X seconds by sleeping a little "
                             "after each minibatch, so simulated preemptions land mid-training "
                             "(default: 0, no pacing)")
    parser.add_argument("--fail-at-epoch", type=int, metavar="E",
                        help="testing: raise an error when epoch E (1-based) starts, like a user-code bug")
    parser.add_argument("--fail-once-marker", metavar="PATH",
                        help="with --fail-at-epoch: fail only if PATH does not exist yet (and create it)")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.epochs < 0 or args.batch_size < 1 or args.checkpoint_every_steps < 0 or min(args.hidden) < 1:
        parser.error("--epochs and --checkpoint-every-steps must be >= 0, --batch-size and --hidden >= 1")
    if args.fail_once_marker and args.fail_at_epoch is None:
        parser.error("--fail-once-marker needs --fail-at-epoch")
    return args


def log(message: str) -> None:
    print(message, flush=True)  # flushed: the task log streams this while the script runs


class Checkpoints:
    """Writes ``ckpt-{step:08d}.npz`` into a directory and keeps only the newest few there."""

    def __init__(self, directory: Path, keep: int = KEEP_CHECKPOINTS) -> None:
        self.directory = directory
        self.keep = keep
        self._saved_step = -1

    def save(self, state: mlp.State) -> Path:
        path = self.directory / f"ckpt-{state['step']:08d}.npz"
        if state["step"] != self._saved_step:  # a notice right after an epoch-end save needs no second write
            mlp.save_state(path, state)
            self._saved_step = state["step"]
            self._prune(state["step"])
        return path

    def _prune(self, current: int) -> None:
        # Only checkpoints up to the current step: newer ones (left by another run?) are not ours to judge.
        pattern = re.compile(CHECKPOINT_PATTERN)
        found = sorted((int(m["step"]), p) for p in self.directory.iterdir() if (m := pattern.match(p.name)))
        older = [p for step, p in found if step <= current]
        for path in older[:-self.keep]:
            path.unlink(missing_ok=True)


def _wait_until(deadline: float, notice: resumable.InterruptionNotice) -> None:
    """Sleep until ``deadline`` in short slices, so a notice still stops training quickly."""
    while (left := deadline - time.monotonic()) > 0 and not notice.requested:
        time.sleep(min(left, 0.05))


def _maybe_fail(args: argparse.Namespace, epoch: int) -> None:
    if args.fail_at_epoch != epoch:
        return
    if args.fail_once_marker:
        marker = Path(args.fail_once_marker)
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    raise SimulatedFailure(f"simulated failure at the start of epoch {epoch} (--fail-at-epoch)")


def run(args: argparse.Namespace, resume: Path | None) -> int:
    """Train from ``resume`` (or from scratch) to ``args.epochs``; return the process exit code."""
    notice = resumable.install_interruption_handler()  # first, so an early SIGTERM is not fatal
    data = mlp.load_dataset(args.data)
    x, y = data["x_train"], data["y_train"]
    config = mlp.Config(seed=args.seed, lr=args.lr, momentum=MOMENTUM, batch_size=args.batch_size,
                        hidden=list(args.hidden))
    if resume is None:
        n_classes = int(max(y.max(), data["y_val"].max())) + 1
        state = mlp.new_state(config, x.shape[1], n_classes)
        log(f"starting fresh (attempt {resumable.attempt()})")
    else:
        state = mlp.load_state(resume)
        if state["config"] != config:  # mixing settings would silently train a different model
            raise SystemExit(f"{resume} was saved with {state['config']}, but this run has {config}; "
                             "use the same settings or an empty checkpoint directory")
        where = f"epoch {state['epoch']}" + (f", batch {state['batch']}" if state["batch"] else "")
        log(f"resuming from {resume.name} ({where}, step {state['step']}, attempt {resumable.attempt()})")

    checkpoints = Checkpoints(resumable.checkpoint_dir())
    pace = args.min_epoch_seconds / mlp.batches_per_epoch(len(y), args.batch_size)  # seconds per minibatch
    start, first = time.monotonic(), state["batch"]
    while state["epoch"] < args.epochs:
        if state["batch"] == 0:
            _maybe_fail(args, state["epoch"] + 1)
        done = state["batch"] + 1  # minibatches of this epoch done after this step
        mlp.train_step(state, x, y)
        if state["batch"] == 0:  # that step finished an epoch
            loss, accuracy = mlp.metrics(state["params"], data["x_val"], data["y_val"])
            path = checkpoints.save(state)
            resumable.report_progress(step=state["step"], epoch=state["epoch"], loss=loss, accuracy=accuracy)
            log(f"epoch {state['epoch']}/{args.epochs} step {state['step']}: "
                f"val loss {loss:.4f} accuracy {accuracy:.4f}, saved {path.name}")
        elif args.checkpoint_every_steps and state["step"] % args.checkpoint_every_steps == 0:
            checkpoints.save(state)
        _wait_until(start + (done - first) * pace, notice)
        if state["batch"] == 0:
            start, first = time.monotonic(), 0
        if notice.requested:  # save the exact state, mid-epoch or not; the next attempt resumes from it
            path = checkpoints.save(state)
            log(f"interruption notice: saved {path.name} at step {state['step']}")
            return resumable.INTERRUPTED_EXIT_CODE

    output = args.output or resumable.checkpoint_dir() / "model.npz"
    mlp.save_model(output, state["params"])
    loss, accuracy = mlp.metrics(state["params"], data["x_val"], data["y_val"])
    log(f"final validation accuracy {accuracy:.4f} (loss {loss:.4f}), "
        f"model written to {Path(output).resolve()}")
    return 0
