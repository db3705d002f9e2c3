"""A task context for driving the operator outside a scheduler: a real operator, real backend and a
state store persisted to a JSON file (so a second process sees what the first one wrote, like the
metadata DB). Used where the test needs to kill the worker process at an exact point."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any


class JsonFileStateStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, key: str, default: Any = None) -> Any:
        return self._load().get(key, default)

    def set(self, key: str, value: Any, *, retention: Any = None) -> None:
        data = self._load()
        data[key] = value
        self.path.write_text(json.dumps(data))


def context(state_path: Path, try_number: int = 1, task_id: str = "train") -> dict[str, Any]:
    xcom: dict[str, Any] = {}  # the extra links' URLs (the cloud backends have some)
    ti = SimpleNamespace(dag_id="crash_dag", run_id="run-1", task_id=task_id, map_index=-1, try_number=try_number,
                         xcom=xcom, xcom_push=lambda key, value: xcom.__setitem__(key, value))
    return {"ti": ti, "task_state_store": JsonFileStateStore(state_path)}
