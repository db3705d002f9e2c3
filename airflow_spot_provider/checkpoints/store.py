"""One checkpoint prefix in object storage: the files, a manifest, and per-attempt markers.

Works on any fsspec filesystem, so ``file://``, ``s3://`` and ``gs://`` share one code path. On the
Airflow side the filesystem comes from ``ObjectStoragePath`` (with the Airflow connection); on a VM
the agent builds it from the URI alone and authenticates with the VM's own role.

Layout under the prefix::

    <checkpoint files, as the job wrote them>
    .spot/manifest.json                 # published files: size, sha256, attempt that wrote them
    .spot/attempts/0003/started.json    # markers: started, notice, final-sync, exit, progress
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

CONTROL_DIR = ".spot"
MARKERS = ("started", "notice", "progress", "final-sync", "exit")


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def safe_relpath(relpath: str) -> str:
    """Reject store keys that would escape the checkpoint directory on restore."""
    parts = relpath.split("/")
    if not relpath or relpath.startswith("/") or "\\" in relpath or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"refusing checkpoint path {relpath!r}: it is empty, absolute or escapes the directory")
    return relpath


@dataclass
class Manifest:
    """Files published to the store: ``relpath -> {size, sha256, attempt, time, source}``."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"version": 1, "files": self.files}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        return cls(files=dict(data.get("files", {})))


class CheckpointStore:
    """A checkpoint prefix on an fsspec filesystem."""

    def __init__(self, fs: Any, root: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")

    @classmethod
    def from_uri(cls, uri: str, **storage_options: Any) -> CheckpointStore:
        """Build from a URI with the environment's own credentials (the agent's path)."""
        import fsspec

        fs, root = fsspec.core.url_to_fs(uri, **storage_options)
        return cls(fs, root)

    @property
    def renames_atomically(self) -> bool:
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        return "file" in protocols or "local" in protocols

    def path(self, relpath: str) -> str:
        return posixpath.join(self.root, relpath)

    # -- files ---------------------------------------------------------------------------------
    def put_file(self, local_path: str, relpath: str) -> None:
        target = self.path(relpath)
        self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        self.fs.put_file(local_path, target)

    def get_file(self, relpath: str, local_path: str) -> None:
        self.fs.get_file(self.path(relpath), local_path)

    def _write_text(self, relpath: str, text: str) -> None:
        """Write a small control object; on file systems with rename, readers never see half of it."""
        target = self.path(relpath)
        self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        if self.renames_atomically:
            tmp = f"{target}.{uuid.uuid4().hex}.tmp"
            self.fs.pipe_file(tmp, text.encode())
            self.fs.mv(tmp, target)
        else:  # object stores publish a single PUT atomically
            self.fs.pipe_file(target, text.encode())

    def _read_text(self, relpath: str) -> str | None:
        try:
            return self.fs.cat_file(self.path(relpath)).decode()
        except FileNotFoundError:
            return None

    # -- manifest ------------------------------------------------------------------------------
    def read_manifest(self) -> Manifest:
        text = self._read_text(f"{CONTROL_DIR}/manifest.json")
        return Manifest.from_json(text) if text else Manifest()

    def write_manifest(self, manifest: Manifest) -> None:
        self._write_text(f"{CONTROL_DIR}/manifest.json", manifest.to_json())

    # -- markers -------------------------------------------------------------------------------
    @staticmethod
    def marker_dir(attempt: int) -> str:
        return f"{CONTROL_DIR}/attempts/{attempt:04d}"

    def write_marker(self, attempt: int, name: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        if name not in MARKERS:
            raise ValueError(f"unknown marker {name!r}")
        record = {"time": time.time(), **(data or {})}
        self._write_text(f"{self.marker_dir(attempt)}/{name}.json", json.dumps(record, sort_keys=True))
        return record

    def read_markers(self, attempt: int) -> dict[str, dict[str, Any]]:
        """All markers of one attempt, by name (missing markers are absent)."""
        paths = {self.path(f"{self.marker_dir(attempt)}/{name}.json"): name for name in MARKERS}
        found = self.fs.cat(list(paths), on_error="omit")  # one batched call on object stores
        return {paths[p]: json.loads(data) for p, data in found.items() if data}
