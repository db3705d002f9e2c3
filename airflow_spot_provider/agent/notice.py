"""Interruption-notice sources. Each answers one question, cheaply and often: has a notice arrived?

``file`` is the local backend's "metadata server"; the cloud backends add their metadata sources
(EC2 IMDS ``spot/instance-action``, GCE ``instance/preempted``) here under their own names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol


class NoticeSource(Protocol):
    def check(self) -> dict[str, Any] | None:
        """The notice (what and when), or None while there is none."""


class NoNotice:
    def check(self) -> dict[str, Any] | None:
        return None


class FileNotice:
    """A notice is a JSON file that appears at ``path`` (the local spot market writes it)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def check(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            return json.loads(text) if text.strip() else {"action": "terminate"}
        except ValueError:
            return {"action": "terminate", "raw": text[:200]}


NOTICE_SOURCES: dict[str, Callable[..., NoticeSource]] = {"none": NoNotice, "file": FileNotice}


def notice_source(spec: dict[str, Any]) -> NoticeSource:
    options = dict(spec)
    kind = options.pop("source", "none")
    try:
        factory = NOTICE_SOURCES[kind]
    except KeyError:
        raise ValueError(f"unknown notice source {kind!r}; known: {', '.join(NOTICE_SOURCES)}") from None
    return factory(**options)
