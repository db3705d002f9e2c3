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
    #: The attempt's "disk": the job's cwd; checkpoints live in work_dir/checkpoints. A VM's boot script names
    #: it relative to the directory the agent starts in.
    work_dir: str
    checkpoint_pattern: str
    sync_interval: float
    resume_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    notice: dict[str, Any] = field(default_factory=lambda: {"source": "none"})
    #: Seconds between syncs after a notice: the job is expected to save right away.
    notice_sync_interval: float = 1.0

    @property
    def checkpoint_dir(self) -> str:
        return f"{self.work_dir}/checkpoints"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AgentConfig:
        """Read on the VM, at the agent's start: a relative ``work_dir`` is fixed before the job changes directory."""
        data = json.loads(text)
        return cls(**{**data, "work_dir": os.path.abspath(data["work_dir"])})
