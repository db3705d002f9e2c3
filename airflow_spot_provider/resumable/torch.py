"""PyTorch: resume a plain training loop exactly where it stopped, and stop it cleanly on a notice.

Wrap the objects that hold training state once, and iterate the epochs and batches through the run::

    run = resume(model, optimizer, scheduler, every_n_steps=50)  # restores the newest checkpoint, if any
    for epoch in run.epochs(num_epochs):
        for x, y in run.batches(loader):
            ...  # one optimizer step
        ...  # end-of-epoch code: validation, per-epoch schedulers

A checkpoint ``ckpt-<step>.pt`` holds the ``state_dict()`` of every object, the epoch and step counters,
every RNG state (Python, NumPy, torch CPU and CUDA, the loader's generators) and the position in the
epoch. On an interruption notice the run saves at the next step boundary and exits with
:data:`~airflow_spot_provider.resumable.INTERRUPTED_EXIT_CODE`.

A resumed run repeats the interrupted one bit for bit when the training itself is deterministic (same
hardware and thread count, ``torch.use_deterministic_algorithms(True)``) and the loader is not
``persistent_workers=True`` (its worker seeds are drawn once per process, not per epoch).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from airflow_spot_provider.resumable import (
    INTERRUPTED_EXIT_CODE,
    atomic_path,
    checkpoint_dir,
    install_interruption_handler,
    latest_checkpoint,
    resume_from,
)
from airflow_spot_provider.resumable._prune import prune_checkpoints

try:
    import numpy
except ImportError:  # torch runs without NumPy; then there is no NumPy RNG to save
    numpy = None

#: The names this module writes; the default ``checkpoint_pattern`` of the operator picks them too.
CHECKPOINT_PATTERN = r"^ckpt-(?P<step>\d+)\.pt$"

RngState = dict[str, Any]


def rng_state(generators: Iterable[torch.Generator] = ()) -> RngState:
    """Every global RNG state (Python, NumPy, torch CPU, CUDA) and those of ``generators``.

    Only plain types and tensors, so a checkpoint holding it loads with ``torch.load(weights_only=True)``.
    """
    state: RngState = {"python": random.getstate(), "torch": torch.get_rng_state(),
                       "generators": [g.get_state() for g in generators]}
    if numpy is not None:
        name, keys, pos, has_gauss, gauss = numpy.random.get_state(legacy=True)
        state["numpy"] = (name, keys.tolist(), pos, has_gauss, gauss)
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: RngState, generators: Iterable[torch.Generator] = ()) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if numpy is not None and "numpy" in state:
        name, keys, pos, has_gauss, gauss = state["numpy"]
        numpy.random.set_state((name, numpy.asarray(keys, dtype=numpy.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for generator, saved in zip(generators, state["generators"], strict=True):
        generator.set_state(saved)


class ResumableLoader:
    """A data loader that can continue an epoch at the batch it stopped at, with the same order.

    Wraps any re-iterable loader (a ``DataLoader`` usually); attributes are forwarded to it. Its state
    is the RNG state from just before the epoch's iterator was created, the number of batches taken
    since, and the RNG state when the state was taken. Resuming replays the epoch's start (same
    shuffle), fetches the batches taken (data loading only: worker-side randomness replays too), then
    puts the RNG state back. An epoch whose batches were all taken counts as finished: the next
    iteration starts a new one. ``state_dict``/``load_state_dict`` make it a resumable loader for
    Lightning too.
    """

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader
        self._start: RngState | None = None
        self._taken = 0
        self._finished = False
        self._pending: dict[str, Any] | None = None

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet (unpickling): do not recurse
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def _generators(self) -> list[torch.Generator]:
        sampler = getattr(self.loader, "sampler", None)
        found: list[torch.Generator] = []
        for generator in (getattr(self.loader, "generator", None), getattr(sampler, "generator", None)):
            if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
                found.append(generator)
        return found

    def state_dict(self) -> dict[str, Any]:
        return {"start": self._start, "taken": self._taken, "finished": self._finished, "rng": rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` at the next iteration."""
        self._pending = state

    def finished(self, state: dict[str, Any]) -> bool:
        """Whether the epoch of ``state`` had no batches left."""
        if state["finished"] or state["start"] is None:
            return True
        try:
            return state["taken"] >= len(self)
        except TypeError:  # no length: the replay finds out
            return False

    def __iter__(self) -> Iterator[Any]:
        pending, self._pending = self._pending, None
        generators = self._generators()
        if pending is not None and not self.finished(pending):
            set_rng_state(pending["start"], generators)
            start, inner = pending["start"], iter(self.loader)
            taken = sum(1 for _ in itertools.islice(inner, pending["taken"]))
            set_rng_state(pending["rng"])
        else:
            if pending is not None:
                set_rng_state(pending["rng"])
            start, taken = rng_state(generators), 0
            inner = iter(self.loader)
        self._start, self._taken, self._finished = start, taken, False
        for batch in inner:
            self._taken += 1
            yield batch
        self._finished = True


class TrainingRun:
    """Counts epochs and steps, saves checkpoints at step boundaries and stops on a notice. See :func:`resume`."""

    def __init__(self, objects: dict[str, Any], *, every_n_steps: int = 0, every_epoch: bool = True,
                 keep: int = 3, directory: str | Path | None = None) -> None:
        self.objects = {name: obj for name, obj in objects.items() if obj is not None}
        self.every_n_steps = every_n_steps
        self.every_epoch = every_epoch
        self.keep = keep
        self.directory = Path(directory) if directory is not None else checkpoint_dir()
        self.notice = install_interruption_handler()  # first, so an early SIGTERM is not fatal
        self.epoch = 0  # the epoch in progress (0-based)
        self.step = 0  # batches trained, over all epochs
        self.restored_from: Path | None = None
        self._loader: ResumableLoader | None = None
        self._resume: dict[str, Any] | None = None  # the interrupted epoch's loader state
        self._saved_step = -1

    def restore(self, path: str | Path) -> None:
        """Load a checkpoint written by :meth:`save` into the objects and the counters."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing = set(self.objects) - set(state["objects"])
        if missing:
            raise ValueError(f"{path} has no state for {sorted(missing)}: it was saved by a different script")
        for name, obj in self.objects.items():
            obj.load_state_dict(state["objects"][name])
        self.epoch, self.step, self._resume = state["epoch"], state["step"], state["loader"]
        self._saved_step = self.step
        self.restored_from = Path(path)

    def epochs(self, total: int) -> Iterator[int]:
        """Epoch numbers from the one in progress (0 on a fresh start) to ``total - 1``."""
        while self.epoch < total:
            yield self.epoch
            self.epoch += 1

    def batches(self, loader: Iterable[Any]) -> Iterator[Any]:
        """The epoch's batches (the rest of them after a resume). Each time the loop body is done with a
        batch, the step is counted, and a checkpoint is saved if one is due or a notice arrived."""
        if self._loader is None or loader not in (self._loader, self._loader.loader):
            self._loader = loader if isinstance(loader, ResumableLoader) else ResumableLoader(loader)
        source = self._loader
        resume, self._resume = self._resume, None
        if resume is not None and source.finished(resume):
            set_rng_state(resume["rng"])  # saved after the epoch's last step: only its end-of-epoch code is left
            return
        if resume is not None:
            source.load_state_dict(resume)
        for batch in source:
            yield batch
            self.step += 1
            if self.notice.requested:
                path = self.save()
                print(f"interruption notice: saved {path.name} at step {self.step} (epoch {self.epoch})", flush=True)
                raise SystemExit(INTERRUPTED_EXIT_CODE)
            if self.every_n_steps and self.step % self.every_n_steps == 0:
                self.save()
        if self.every_epoch:
            self.save()

    def save(self) -> Path:
        """Write ``ckpt-<step>.pt`` atomically (once per step) and keep the newest ``keep`` locally."""
        path = self.directory / f"ckpt-{self.step:08d}.pt"
        if self.step == self._saved_step:
            return path
        if self._loader is None:
            raise RuntimeError("save() needs the position in the epoch: iterate run.batches(loader) first")
        state = {"epoch": self.epoch, "step": self.step, "loader": self._loader.state_dict(),
                 "objects": {name: obj.state_dict() for name, obj in self.objects.items()}}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        self._saved_step = self.step
        prune_checkpoints(self.directory, CHECKPOINT_PATTERN, self.keep, newest=self.step)
        return path


def resume(model: torch.nn.Module, optimizer: Any = None, scheduler: Any = None, *, every_n_steps: int = 0,
           every_epoch: bool = True, keep: int = 3, directory: str | Path | None = None,
           **others: Any) -> TrainingRun:
    """A :class:`TrainingRun` over ``model``, ``optimizer``, ``scheduler`` and ``others`` (anything with
    ``state_dict``/``load_state_dict``, e.g. a ``GradScaler``), restored from ``SPOT_RESUME_FROM`` or
    the newest ``ckpt-<step>.pt`` in the checkpoint directory, if there is one.

    Checkpoints are saved every ``every_n_steps`` steps (0: never), after each epoch's last step
    (``every_epoch``), and on an interruption notice; the newest ``keep`` stay in the directory.
    """
    run = TrainingRun({"model": model, "optimizer": optimizer, "scheduler": scheduler, **others},
                      every_n_steps=every_n_steps, every_epoch=every_epoch, keep=keep, directory=directory)
    path = (resume_from() if directory is None else None) or latest_checkpoint(run.directory, CHECKPOINT_PATTERN)
    if path is not None:
        run.restore(path)
        print(f"resuming from {path.name} (epoch {run.epoch}, step {run.step})", flush=True)
    return run
