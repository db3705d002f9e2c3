"""Resolve the latest checkpoint among names by a numeric step, not by string order."""

from __future__ import annotations

import re
from collections.abc import Iterable

#: Default: the last run of digits in a top-level name (``epoch-0099.npz`` -> 99, ``step_1000/`` -> 1000).
DEFAULT_CHECKPOINT_PATTERN = r"(?P<step>\d+)(?!.*\d)"


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a checkpoint pattern; it must have a numeric group named ``step`` (or one group)."""
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"checkpoint_pattern {pattern!r} is not a valid regular expression: {err}") from err
    if "step" not in compiled.groupindex and compiled.groups != 1:
        raise ValueError(
            f"checkpoint_pattern {pattern!r} needs a group named 'step' (or exactly one group) "
            "that captures the checkpoint's step or epoch number"
        )
    return compiled


def checkpoint_step(name: str, pattern: re.Pattern[str]) -> int | None:
    """The step number of a top-level checkpoint name, or None when the name is not a checkpoint."""
    match = pattern.search(name)
    if match is None:
        return None
    value = match.group("step") if "step" in pattern.groupindex else match.group(1)
    if value is None or not value.isdigit():
        return None
    return int(value)


def latest_name(names: Iterable[str], pattern: str | re.Pattern[str] = DEFAULT_CHECKPOINT_PATTERN) -> str | None:
    """The name with the highest step; ties go to the lexicographically last name (deterministic)."""
    compiled = compile_pattern(pattern) if isinstance(pattern, str) else pattern
    best: tuple[int, str] | None = None
    for name in names:
        step = checkpoint_step(name, compiled)
        if step is not None and (best is None or (step, name) > best):
            best = (step, name)
    return best[1] if best else None


def is_temporary_name(name: str) -> bool:
    """Hidden files and ``*.tmp`` files are work in progress: never synced, never restored."""
    return name.startswith(".") or name.endswith(".tmp")


def top_level(relpath: str) -> str:
    """The first component of a store-relative path: the unit a checkpoint is (file or directory)."""
    return relpath.split("/", 1)[0]
