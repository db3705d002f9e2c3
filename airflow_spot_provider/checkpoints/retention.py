"""Checkpoint retention: staging leftovers of fenced attempts, and checkpoints beyond the newest N.

The operator runs it (``keep_checkpoints``) after an attempt's disk was released and before the next
attempt is launched. Then no attempt may write or restore: the ended attempt's VM is terminated and its
disk saved, older attempts are fenced, the next one is not running yet. What may still be alive is a
stale VM wrongly believed dead, and retention is safe against it too:

- staging directories are removed only for attempts below the fence, so an upload that may still be in
  flight is never touched (the ended attempt's own leftovers go at the next release);
- manifest entries are removed first, with a compare-and-swap (:meth:`CheckpointStore.update_manifest`),
  and only then their files: a crash in between leaves files no manifest names (never restored), never
  an entry without its file;
- the newest checkpoint whose files all match their manifest checksums, the one restore would pick,
  is always kept, even when it is older than the newest N (the newest ones are corrupt).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from airflow_spot_provider.checkpoints.store import CheckpointStore, Manifest
from airflow_spot_provider.checkpoints.sync import Published, published

log = logging.getLogger(__name__)


@dataclass
class RetentionResult:
    removed: list[str] = field(default_factory=list)  # checkpoints (top-level names) removed
    kept: list[str] = field(default_factory=list)  # checkpoints kept, newest first
    verified: str | None = None  # the newest intact checkpoint (None when nothing needed checking)
    staging: list[str] = field(default_factory=list)  # staging directories removed

    def describe(self) -> str:
        return (f"removed {len(self.removed)} checkpoint(s) {', '.join(self.removed) or '-'}; kept "
                f"{', '.join(self.kept) or '-'} (newest intact: {self.verified or 'not checked'}); "
                f"removed {len(self.staging)} staging upload(s) of fenced attempts")


def apply_retention(store: CheckpointStore, pattern: str, keep: int) -> RetentionResult:
    """Keep the newest ``keep`` checkpoints (by step) and the newest intact one; drop fenced staging uploads.

    Reads the newest checkpoints in full to check their checksums (as a restore does), from the newest
    down to the first intact one, and only when more than ``keep`` checkpoints are published. Files
    that are not checkpoints (the pattern does not match their top-level name) are never removed.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    result = RetentionResult()
    checked: dict[tuple[str, ...], bool] = {}  # across compare-and-swap rounds: each checkpoint is read once
    doomed: list[str] = []

    def intact(found: Published, name: str) -> bool:
        files = found.groups[name]
        key = (name, *(found.entries[relpath]["sha256"] for relpath in files))
        if key not in checked:
            checked[key] = all(store.sha256(relpath) == found.entries[relpath]["sha256"] for relpath in files)
            if not checked[key]:
                log.warning("checkpoint %s is incomplete or corrupt in the store", name)
        return checked[key]

    def drop(manifest: Manifest) -> bool:
        found = published(manifest, pattern)
        doomed.clear()
        result.kept, result.removed, result.verified = list(found.checkpoints), [], None
        if len(found.checkpoints) <= keep:
            return False
        result.verified = next((name for name in found.checkpoints if intact(found, name)), None)
        if result.verified is None:
            log.warning("none of the %d checkpoints is intact: retention removes none of them",
                        len(found.checkpoints))
            return False
        newest = found.checkpoints[:keep]
        result.kept = [name for name in found.checkpoints if name in newest or name == result.verified]
        result.removed = [name for name in found.checkpoints if name not in result.kept]
        doomed.extend(relpath for name in result.removed for relpath in found.groups[name])
        for relpath in doomed:
            del manifest.files[relpath]
        return bool(doomed)

    # Local disks: no sync's check-then-write interleaves (a stale attempt's); object stores: conditional writes.
    with store.fence_guard(exclusive=True):
        result.staging = store.remove_staging(below=store.read_fence())
        store.update_manifest(drop)
        store.remove(doomed)  # only now: the manifest no longer names them
    return result
