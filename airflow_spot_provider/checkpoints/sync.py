"""Incremental, manifest-driven sync of a local checkpoint directory to a store, and restore.

Sync uploads only files whose content changed since they were published. Each file goes to a staging
key first and is moved to its final name once its size is verified; the manifest is written last, so
it never names a file that is not fully in the store. A sync is fenced: once a newer attempt owns the
store (:meth:`DirectorySync.check_fence`) it publishes nothing more and raises :class:`FencedError`.
Restore downloads the newest checkpoint whose checksums match the manifest, falling back to older
ones, and refuses keys that would land outside the local directory.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_spot_provider.checkpoints.latest import (
    checkpoint_step,
    compile_pattern,
    is_temporary_name,
    latest_name,
    top_level,
)
from airflow_spot_provider.checkpoints.store import (
    CheckpointStore,
    FencedError,
    Manifest,
    safe_relpath,
    sha256_file,
)

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
    rejected: list[str] = field(default_factory=list)  # corrupt, missing or unsafe entries skipped


@dataclass(frozen=True)
class _Change:
    relpath: str
    stat: os.stat_result
    sha256: str


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


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns) == (b.st_size, b.st_mtime_ns)


class DirectorySync:
    """Publishes new and changed files of one directory as ``attempt``; keeps a hash cache between rounds.

    The agent runs it while the job runs (``source="agent"``) and once after the job exits
    (``Marker.FINAL_SYNC``). Backup-save runs it on the operator side over a dead attempt's disk
    (``DirectorySync(disk, store, N, pattern).sync(Marker.BACKUP_SAVE.value)``) with that attempt's own number N,
    and it is fenced exactly like the agent. The operator keeps this order for every relaunch:

    1. the trigger reports attempt N ended; the operator terminates N's VM;
    2. backup-save of N (fence still at N: allowed to publish);
    3. ``store.raise_fence(N + 1)``;
    4. launch attempt N+1 (its agent restores, then writes its ``started`` marker).

    After step 3 anything still running as attempt N (a VM wrongly believed dead) is refused.
    """

    def __init__(self, local_dir: str | Path, store: CheckpointStore, attempt: int, pattern: str) -> None:
        self.local_dir = Path(local_dir)
        self.store = store
        self.attempt = attempt
        self.pattern = pattern
        self._hashes: dict[str, tuple[int, int, str]] = {}
        self._manifest: Manifest | None = None

    # -- fencing -------------------------------------------------------------------------------
    def check_fence(self, manifest: Manifest | None = None) -> None:
        """Raise :class:`FencedError` when a newer attempt owns the store.

        A newer attempt is known from the raised fence, or from an entry it published in ``manifest``
        (which covers an operator that crashed before it raised the fence).
        """
        level = self.store.read_fence()
        if manifest is not None:
            level = max(level, manifest.newest_attempt())
        if level > self.attempt:
            raise FencedError(self.attempt, level)

    def _check_overwrite(self, relpath: str) -> None:
        """Right before a move: never put this attempt's bytes over a file a newer attempt published."""
        self.check_fence()
        if self.store.exists(relpath):
            entry = self.store.read_manifest().files.get(relpath)
            owner = entry.get("attempt") if isinstance(entry, dict) else None
            if isinstance(owner, int) and owner > self.attempt:
                raise FencedError(self.attempt, owner)

    # -- one round -----------------------------------------------------------------------------
    def _sha(self, relpath: str, st: os.stat_result) -> str | None:
        cached = self._hashes.get(relpath)
        if cached and cached[:2] == (st.st_size, st.st_mtime_ns):
            return cached[2]
        path = self.local_dir / relpath
        sha = sha256_file(str(path))
        if not _same_file(path.stat(), st):
            return None  # being written right now: take it next round
        self._hashes[relpath] = (st.st_size, st.st_mtime_ns, sha)
        return sha

    def _changes(self, manifest: Manifest, result: SyncResult) -> list[_Change]:
        changes = []
        for relpath, st in scan(self.local_dir).items():
            sha = self._sha(relpath, st)
            if sha is None:
                continue
            entry = manifest.files.get(relpath)
            if isinstance(entry, dict) and entry.get("sha256") == sha:
                result.unchanged += 1
                continue
            changes.append(_Change(relpath, st, sha))
        return changes

    def _upload(self, change: _Change) -> bool:
        """Stage, verify, move one file. False when the job changed or removed it meanwhile (next round)."""
        path = self.local_dir / change.relpath
        try:
            staging = self.store.stage_file(str(path), change.relpath, self.attempt)
        except FileNotFoundError:
            if path.exists():
                raise  # the store's side is missing (a bucket, a prefix): a real error
            return False
        try:
            unchanged = _same_file(path.stat(), change.stat)
        except FileNotFoundError:
            unchanged = False
        if not unchanged:
            log.info("%s changed while it was uploaded: taking it next round", change.relpath)
            self.store.discard_staged(staging)
            return False
        # Local disks: no fence raise between this last check and the move (object stores: see concepts.md).
        with self.store.fence_guard():
            try:
                self._check_overwrite(change.relpath)
            except FencedError:
                self.store.discard_staged(staging)
                raise
            self.store.commit_file(staging, change.relpath)
        return True

    def _publish(self, entries: dict[str, dict[str, Any]]) -> Manifest:
        """Merge this round's entries into the manifest as it is now (another writer may have added some).

        A compare-and-swap: if the manifest is replaced between this read and the write, it is read again
        and the fence checked again, so a newer attempt's manifest is never overwritten.
        """
        def merge(manifest: Manifest) -> bool:
            self.check_fence(manifest)  # the fence, or a newer attempt's entry: never replace it, publish nothing
            manifest.files.update(entries)
            return True

        return self.store.update_manifest(merge)

    def sync(self, source: str = "agent") -> SyncResult:
        """One round: upload what changed, then publish it. Raises :class:`FencedError` once fenced."""
        self.check_fence()
        if self._manifest is None:
            self._manifest = self.store.read_manifest()
        result = SyncResult()
        changes = self._changes(self._manifest, result)
        if changes:
            # Compare with what is published now: another writer (backup-save) may hold the same bytes.
            self._manifest = self.store.read_manifest()
            self.check_fence(self._manifest)
            result = SyncResult()
            changes = self._changes(self._manifest, result)  # hashes are cached: no second read of the files
        entries: dict[str, dict[str, Any]] = {}
        failure: OSError | None = None
        for change in changes:
            try:
                if not self._upload(change):
                    continue
            except OSError as err:  # publish what already reached its final name, then report
                failure = err
                break
            entries[change.relpath] = {
                "size": change.stat.st_size, "sha256": change.sha256, "attempt": self.attempt,
                "mtime": change.stat.st_mtime, "time": time.time(), "source": source,
            }
            result.uploaded.append(change.relpath)
            result.bytes += change.stat.st_size
        if entries:
            try:
                self._manifest = self._publish(entries)
            except Exception:
                self._manifest = None  # re-read next round, so these files are published again
                raise
        if failure is not None:
            raise failure
        result.latest = latest_name({top_level(p) for p in self._manifest.files}, self.pattern)
        return result


# -- restore -------------------------------------------------------------------------------------
def _valid_entry(entry: Any) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
            and isinstance(entry.get("size"), int) and not isinstance(entry.get("size"), bool))


def local_target(local: Path, relpath: str) -> Path:
    """Where a (safe) store key lands under ``local``; refuses a path through a symlink in the local dir."""
    target = local
    for part in safe_relpath(relpath).split("/"):
        target = target / part
        if target.is_symlink():
            raise ValueError(f"refusing checkpoint path {relpath!r}: {target} is a symlink")
    return target


class _Restorer:
    """Downloads entries one by one into ``local``, checking each against the manifest."""

    def __init__(self, store: CheckpointStore, local: Path, entries: dict[str, dict], result: RestoreResult):
        self.store = store
        self.local = local
        self.entries = entries
        self.result = result

    def _reject(self, relpath: str, why: str) -> bool:
        log.warning("%s: not restored (%s)", relpath, why)
        self.result.rejected.append(relpath)
        return False

    def fetch(self, relpath: str) -> bool:
        entry = self.entries[relpath]
        try:
            target = local_target(self.local, relpath)
            target.parent.mkdir(parents=True, exist_ok=True)
        except (ValueError, FileExistsError, NotADirectoryError) as err:
            return self._reject(relpath, str(err))
        tmp = target.with_name(f".{target.name}.restore.tmp")
        tmp.unlink(missing_ok=True)  # never write through a leftover (or planted) link
        try:
            self.store.get_file(relpath, str(tmp))
        except (FileNotFoundError, IsADirectoryError):
            return self._reject(relpath, "listed in the manifest but missing from the store")
        if sha256_file(str(tmp)) != entry["sha256"]:
            tmp.unlink(missing_ok=True)
            return self._reject(relpath, "checksum mismatch")
        try:
            os.replace(tmp, target)
        except (IsADirectoryError, NotADirectoryError) as err:
            tmp.unlink(missing_ok=True)
            return self._reject(relpath, str(err))
        self.result.files.append(relpath)
        self.result.bytes += entry["size"]
        return True


def restore(store: CheckpointStore, local_dir: str | Path, pattern: str) -> RestoreResult:
    """Download the newest intact checkpoint plus files that are not checkpoints (vocabularies, configs).

    Older checkpoints are not downloaded. A checkpoint with a file that is missing or whose checksum
    does not match the manifest is skipped and the next newest one is tried. Keys that would escape
    ``local_dir`` are refused. Only the manifest decides what is restored: staging objects and files
    that never made it into the manifest (a killed upload) are never looked at.
    """
    local = Path(local_dir)
    local.mkdir(parents=True, exist_ok=True)
    local = local.resolve()
    found = published(store.read_manifest(), pattern)
    result = RestoreResult(rejected=list(found.rejected))
    restorer = _Restorer(store, local, found.entries, result)
    for name in found.others:
        for relpath in found.groups[name]:
            restorer.fetch(relpath)
    for name in found.checkpoints:
        if all([restorer.fetch(relpath) for relpath in found.groups[name]]):
            result.resume_from = name
            break
        log.warning("checkpoint %s is incomplete or corrupt; trying the previous one", name)
    if found.checkpoints and result.resume_from is None:
        # Starting from scratch would silently throw the job's progress away: stop and say so.
        raise RuntimeError(f"none of the {len(found.checkpoints)} checkpoint(s) in the store is intact: "
                           f"{', '.join(found.checkpoints[:5])}")
    return result


@dataclass
class Published:
    """A manifest's usable entries by top-level name: what restore (and retention) choose from."""

    entries: dict[str, dict] = field(default_factory=dict)  # safe, well-formed entries only
    groups: dict[str, list[str]] = field(default_factory=dict)  # top-level name -> its relpaths, sorted
    checkpoints: list[str] = field(default_factory=list)  # names the pattern matches, newest first
    others: list[str] = field(default_factory=list)  # names that are not checkpoints (vocabularies, configs)
    rejected: list[str] = field(default_factory=list)  # unsafe keys and malformed entries


def published(manifest: Manifest, pattern: str) -> Published:
    found = Published()
    for relpath, entry in manifest.files.items():
        try:
            safe_relpath(relpath)
        except ValueError as err:
            log.warning("%s", err)
            found.rejected.append(relpath)
            continue
        if not _valid_entry(entry):
            log.warning("manifest entry for %r is malformed: not restored", relpath)
            found.rejected.append(relpath)
            continue
        found.entries[relpath] = entry
    compiled = compile_pattern(pattern)
    for relpath in found.entries:
        found.groups.setdefault(top_level(relpath), []).append(relpath)
    for relpaths in found.groups.values():
        relpaths.sort()
    found.checkpoints = sorted(
        (name for name in found.groups if checkpoint_step(name, compiled) is not None),
        key=lambda name: (checkpoint_step(name, compiled), name),
        reverse=True,
    )
    found.others = [name for name in found.groups if checkpoint_step(name, compiled) is None]
    return found
