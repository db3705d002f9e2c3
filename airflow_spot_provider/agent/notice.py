"""Interruption-notice sources. Each answers one question, cheaply and often: has a notice arrived?

``file`` is the local backend's "metadata server"; ``ec2-imds`` reads EC2's instance metadata
(IMDSv2 ``spot/instance-action``: about 2 minutes of warning); ``gce-metadata`` reads Compute Engine's
``instance/preempted`` (about 30 seconds). Only the standard library: this runs on the VM.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
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


log = logging.getLogger(__name__)


def _http(request: urllib.request.Request, timeout: float) -> str | None:
    """The body, or None for 404 (no notice yet). Other errors propagate: the runner retries next round."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - a metadata endpoint
            return response.read().decode()
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise


class Ec2ImdsNotice:
    """EC2 instance metadata (IMDSv2). ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` moves the endpoint, as in the AWS SDKs.

    The rebalance recommendation can come long before an interruption: it is logged, and treated as a
    notice only with ``rebalance_as_notice`` (checkpoint and move now rather than wait for the 2 minutes).
    """

    TOKEN_TTL = 21600

    def __init__(self, endpoint: str | None = None, rebalance_as_notice: bool = False, timeout: float = 2.0) -> None:
        base = endpoint or os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or "http://169.254.169.254/"
        self.base = base.rstrip("/")
        self.rebalance_as_notice = rebalance_as_notice
        self.timeout = timeout
        self._token: tuple[str, float] | None = None
        self._rebalance_seen = False

    def _get(self, path: str) -> str | None:
        if self._token is None or self._token[1] < time.monotonic():
            put = urllib.request.Request(f"{self.base}/latest/api/token", method="PUT",
                                         headers={"X-aws-ec2-metadata-token-ttl-seconds": str(self.TOKEN_TTL)})
            token = _http(put, self.timeout) or ""
            self._token = (token, time.monotonic() + self.TOKEN_TTL - 60)
        get = urllib.request.Request(f"{self.base}/latest/meta-data/{path}",
                                     headers={"X-aws-ec2-metadata-token": self._token[0]})
        return _http(get, self.timeout)

    def check(self) -> dict[str, Any] | None:
        action = self._get("spot/instance-action")
        if action:
            return {"source": "ec2-imds", **json.loads(action)}
        rebalance = self._get("events/recommendations/rebalance")
        if rebalance and not self._rebalance_seen:
            self._rebalance_seen = True
            log.warning("rebalance recommendation: this spot instance is at elevated risk of interruption (%s)",
                        rebalance.strip())
        if rebalance and self.rebalance_as_notice:
            return {"source": "ec2-imds", "action": "rebalance", **json.loads(rebalance)}
        return None


class GceMetadataNotice:
    """Compute Engine metadata ``instance/preempted`` (TRUE once preemption starts: ~30 s before power-off).
    ``GCE_METADATA_HOST`` moves the server, as in the Google client libraries."""

    def __init__(self, host: str | None = None, timeout: float = 2.0) -> None:
        self.host = host or os.environ.get("GCE_METADATA_HOST") or "metadata.google.internal"
        self.timeout = timeout

    def check(self) -> dict[str, Any] | None:
        request = urllib.request.Request(f"http://{self.host}/computeMetadata/v1/instance/preempted",
                                         headers={"Metadata-Flavor": "Google"})
        if (_http(request, self.timeout) or "").strip().upper() == "TRUE":
            return {"source": "gce-metadata", "action": "preempted", "time": time.time()}
        return None


NOTICE_SOURCES: dict[str, Callable[..., NoticeSource]] = {
    "none": NoNotice, "file": FileNotice, "ec2-imds": Ec2ImdsNotice, "gce-metadata": GceMetadataNotice,
}


def notice_source(spec: dict[str, Any]) -> NoticeSource:
    options = dict(spec)
    kind = options.pop("source", "none")
    try:
        factory = NOTICE_SOURCES[kind]
    except KeyError:
        raise ValueError(f"unknown notice source {kind!r}; known: {', '.join(NOTICE_SOURCES)}") from None
    return factory(**options)
