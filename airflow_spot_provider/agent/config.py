"""What the agent needs for one attempt, written by the backend as JSON next to the job."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class AgentConfig:
    attempt: int
    instance_id: str
    command: list[str]
    checkpoint_uri: str
    work_dir: str  # the attempt's "disk": the job's cwd; checkpoints live in work_dir/checkpoints
    checkpoint_pattern: str
    sync_interval: float
    resume_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    notice: dict[str, Any] = field(default_factory=lambda: {"source": "none"})
    #: Seconds between syncs after a notice: the job is expected to save right away.
    notice_sync_interval: float = 1.0

    def __post_init__(self) -> None:
        # A VM's bootstrap names the disk relative to its own root: fix it before the job changes directory.
        object.__setattr__(self, "work_dir", os.path.abspath(self.work_dir))

    @property
    def checkpoint_dir(self) -> str:
        return f"{self.work_dir}/checkpoints"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AgentConfig:
        return cls(**json.loads(text))
