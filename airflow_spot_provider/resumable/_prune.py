"""Keep the newest few checkpoints in the local checkpoint directory (the store keeps its own history)."""

from __future__ import annotations

import shutil
from collections.abc import Collection
from pathlib import Path

from airflow_spot_provider.checkpoints.latest import checkpoint_step, compile_pattern, is_temporary_name


def prune_checkpoints(directory: Path, pattern: str, keep: int, newest: int,
                      protect: Collection[Path] = ()) -> list[Path]:
    """Remove all but the ``keep`` newest checkpoints (files or directories) of step ``newest`` or less.

    Newer ones are left alone: they were not written by this run, so they are not this run's to judge.
    Paths in ``protect`` (a best model, say) are kept whatever their age; ``keep`` below 1 keeps everything.
    Returns what was removed.
    """
    if keep < 1:
        return []
    compiled = compile_pattern(pattern)
    found = sorted((step, path) for path in directory.iterdir()
                   if not is_temporary_name(path.name)
                   and (step := checkpoint_step(path.name, compiled)) is not None and step <= newest)
    removed = [path for _, path in found[:-keep] if path not in protect]
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed
