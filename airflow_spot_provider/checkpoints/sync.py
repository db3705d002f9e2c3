"""Incremental, manifest-driven sync of a local checkpoint directory to a store, and restore.

Only files whose content changed since they were published are uploaded; the manifest is written
after the files, so it never names a file that is not fully in the store.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from airflow_spot_provider.checkpoints.latest import (
    checkpoint_step,
    compile_pattern,
    is_temporary_name,
    latest_name,
    top_level,
)
from airflow_spot_provider.checkpoints.store import CheckpointStore, Manifest, safe_relpath, sha256_file

log = logging.getLogger(__name__)


@dataclass
class SyncResult:
    uploaded: list[str] = field(default_factory=list)
    bytes: int = 0
    unchanged: int = 0
    latest: str | None = None

    def to_dict(self) -> dict:
        return {"files": len(self.uploaded), "bytes": self.bytes, "unchanged": self.unchanged, "latest": self.latest}


@dataclass
class RestoreResult:
    resume_from: str | None = None  # top-level name of the restored checkpoint
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    rejected: list[str] = field(default_factory=list)  # corrupt or unsafe entries skipped


def scan(local_dir: Path) -> dict[str, os.stat_result]:
    """Regular files under ``local_dir`` by POSIX relative path; symlinks and temporary names skipped."""
    found: dict[str, os.stat_result] = {}
    if not local_dir.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(local_dir, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not is_temporary_name(d))
        for name in sorted(filenames):
            if is_temporary_name(name):
                continue
            path = Path(dirpath, name)
            st = path.lstat()
            if path.is_symlink() or not path.is_file():
                continue
            found[path.relative_to(local_dir).as_posix()] = st
    return found


class DirectorySync:
    """Publishes new and changed files of one directory; keeps a hash cache between rounds."""

    def __init__(self, local_dir: str | Path, store: CheckpointStore, attempt: int, pattern: str) -> None:
        self.local_dir = Path(local_dir)
        self.store = store
        self.attempt = attempt
        self.pattern = pattern
        self._hashes: dict[str, tuple[int, int, str]] = {}
        self._manifest: Manifest | None = None

    def _sha(self, relpath: str, st: os.stat_result) -> str | None:
        cached = self._hashes.get(relpath)
        if cached and cached[:2] == (st.st_size, st.st_mtime_ns):
            return cached[2]
        path = self.local_dir / relpath
        sha = sha256_file(str(path))
        after = path.stat()
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            return None  # being written right now: take it next round
        self._hashes[relpath] = (st.st_size, st.st_mtime_ns, sha)
        return sha

    def sync(self, source: str = "agent") -> SyncResult:
        if self._manifest is None:  # this attempt is the only writer: read the manifest once
            self._manifest = self.store.read_manifest()
        manifest = self._manifest
        result = SyncResult()
        for relpath, st in scan(self.local_dir).items():
            sha = self._sha(relpath, st)
            if sha is None:
                continue
            entry = manifest.files.get(relpath)
            if entry and entry.get("sha256") == sha:
                result.unchanged += 1
                continue
            self.store.put_file(str(self.local_dir / relpath), relpath)
            manifest.files[relpath] = {
                "size": st.st_size, "sha256": sha, "attempt": self.attempt, "mtime": st.st_mtime,
                "time": time.time(), "source": source,
            }
            result.uploaded.append(relpath)
            result.bytes += st.st_size
        if result.uploaded:
            try:
                self.store.write_manifest(manifest)
            except Exception:
                self._manifest = None  # re-read next round, so these files are published again
                raise
        result.latest = latest_name({top_level(p) for p in manifest.files}, self.pattern)
        return result


def restore(store: CheckpointStore, local_dir: str | Path, pattern: str) -> RestoreResult:
    """Download the newest intact checkpoint plus files that are not checkpoints (vocabularies, configs).

    Older checkpoints are not downloaded. A checkpoint whose checksum does not match the manifest is
    skipped and the next newest one is tried.
    """
    local = Path(local_dir)
    local.mkdir(parents=True, exist_ok=True)
    manifest = store.read_manifest()
    result = RestoreResult()
    safe: dict[str, dict] = {}
    for relpath, entry in manifest.files.items():
        try:
            safe[safe_relpath(relpath)] = entry
        except ValueError as err:
            log.warning("%s", err)
            result.rejected.append(relpath)

    compiled = compile_pattern(pattern)
    groups: dict[str, list[str]] = {}
    for relpath in safe:
        groups.setdefault(top_level(relpath), []).append(relpath)
    checkpoints = sorted(
        (name for name in groups if checkpoint_step(name, compiled) is not None),
        key=lambda name: (checkpoint_step(name, compiled), name),
        reverse=True,
    )
    others = [name for name in groups if checkpoint_step(name, compiled) is None]

    def fetch(relpath: str) -> bool:
        target = local / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.restore.tmp")
        store.get_file(relpath, str(tmp))
        if sha256_file(str(tmp)) != safe[relpath]["sha256"]:
            tmp.unlink(missing_ok=True)
            log.warning("checksum mismatch for %s: not restored", relpath)
            result.rejected.append(relpath)
            return False
        os.replace(tmp, target)
        result.files.append(relpath)
        result.bytes += safe[relpath]["size"]
        return True

    for name in others:
        for relpath in sorted(groups[name]):
            fetch(relpath)
    for name in checkpoints:
        if all([fetch(relpath) for relpath in sorted(groups[name])]):
            result.resume_from = name
            break
        log.warning("checkpoint %s is incomplete or corrupt; trying the previous one", name)
    if checkpoints and result.resume_from is None:
        # Starting from scratch would silently throw the job's progress away: stop and say so.
        raise RuntimeError(f"none of the {len(checkpoints)} checkpoint(s) in the store is intact: "
                           f"{', '.join(checkpoints[:5])}")
    return result
