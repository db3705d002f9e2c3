"""One checkpoint prefix in object storage: the files, a manifest, per-attempt markers and a fence.

Works on any fsspec filesystem, so ``file://``, ``s3://`` and ``gs://`` share one code path. On the
Airflow side the filesystem comes from ``ObjectStoragePath`` (with the Airflow connection); on a VM
the agent builds it from the URI alone and authenticates with the VM's own role.

Layout under the prefix::

    <checkpoint files, as the job wrote them>
    .spot/manifest.json                 # published files: size, sha256, attempt that wrote them
    .spot/fence.json                    # {"attempt": N}: attempts below N may no longer publish
    .spot/fence.lock                    # local disks only: orders fence raises with syncs' check-then-write
    .spot/attempts/0003/started.json    # markers (attempt.Marker): started, notice, final-sync, exit…
    .spot/attempts/0003/log             # the attempt's output (the job's and the agent's), its last MiB
    .spot/ledger/<task instance>/*.json # the ledger's mirror (see ledger.py)
    .spot/staging/0003-<uuid>/<relpath> # uploads in flight; moved to <relpath> once complete

Integrity rules kept here:

- a file reaches its final name only whole: it is uploaded to a staging key, its size checked, then
  moved (a rename on local disks, a server-side copy on object stores); the manifest, written last,
  is what makes it part of a checkpoint. A half-written upload is only ever a staging object.
- a sync deletes only its own staging objects (the second half of a move on object stores, or an
  upload that is discarded before publishing). Published files are deleted only by retention
  (``checkpoints/retention.py``), which removes their manifest entries first.
- the fence and the manifest are read-compare-written: on S3 with conditional PUTs (``If-None-Match``/
  ``If-Match``), on local disks under an ``flock`` (:meth:`CheckpointStore.fence_guard`), so a writer
  never replaces a newer fence or a manifest that changed after it checked the fence.
- every storage call is retried on transient errors (:func:`is_transient`) with capped, jittered
  exponential backoff; errors that outlast the retries are raised as :class:`StorageError`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import posixpath
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from airflow_spot_provider.attempt import Marker
from airflow_spot_provider.checkpoints.latest import latest_name, top_level

log = logging.getLogger(__name__)

CONTROL_DIR = ".spot"
FENCE = f"{CONTROL_DIR}/fence.json"
FENCE_LOCK = f"{CONTROL_DIR}/fence.lock"
MANIFEST = f"{CONTROL_DIR}/manifest.json"
STAGING_DIR = f"{CONTROL_DIR}/staging"
LEDGER_DIR = f"{CONTROL_DIR}/ledger"
#: The attempt's output, next to its markers.
ATTEMPT_LOG = "log"
#: Longest path component most file systems accept (bytes).
MAX_NAME_BYTES = 255
#: Read-compare-write rounds before giving up: each lost round means another writer changed the object.
CAS_ROUNDS = 8
#: ``Manifest.read_as`` of a manifest built by hand rather than read: writing it is unconditional.
UNCONDITIONAL: Any = object()
#: Fence locks this thread holds, by lock path -> exclusive (``fence_guard`` is re-entrant per thread).
_HELD = threading.local()

T = TypeVar("T")


class StorageError(OSError):
    """A storage call that kept failing after its retries (or a staged upload that never verified)."""


class ManifestChanged(RuntimeError):
    """Another writer replaced the manifest after it was read: read it again and redo the change."""


class FencedError(RuntimeError):
    """A newer attempt owns the store: this attempt may no longer publish anything."""

    def __init__(self, attempt: int, fence: int) -> None:
        super().__init__(f"attempt {attempt} is fenced by attempt {fence}: a newer attempt owns the checkpoints")
        self.attempt = attempt
        self.fence = fence


# -- transient errors ----------------------------------------------------------------------------
#: OSError subclasses and errnos that retrying cannot fix (missing, forbidden, full, read-only).
PERSISTENT_OS_ERRORS: tuple[type[OSError], ...] = (
    FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError, StorageError,
)
PERSISTENT_ERRNOS = frozenset({
    errno.ENOENT, errno.EEXIST, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR,
    errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG, errno.EINVAL,
})
#: Non-OSError types that mean "try again", by defining module. They are looked up in ``sys.modules``
#: only: an error type can only be raised once its module is loaded, so nothing is imported here.
TRANSIENT_TYPES: dict[str, tuple[str, ...]] = {
    "asyncio": ("TimeoutError",),  # not an OSError before Python 3.11
    "fsspec.exceptions": ("FSTimeoutError",),
    "botocore.exceptions": ("ConnectionError", "HTTPClientError", "IncompleteReadError", "ResponseStreamingError"),
    "aiohttp": ("ClientConnectionError", "ClientPayloadError"),
    "google.auth.exceptions": ("TransportError",),
    "gcsfs.retry": ("ChecksumError",),
}
#: Errors that carry an HTTP status or service code: retried only for these values.
STATUS_ERROR_TYPES: dict[str, tuple[str, ...]] = {
    "botocore.exceptions": ("ClientError",),
    "gcsfs.retry": ("HttpError",),
}
TRANSIENT_HTTP_STATUS = frozenset({408, 429, 500, 502, 503, 504})
TRANSIENT_SERVICE_CODES = frozenset({
    "RequestTimeout", "Throttling", "ThrottlingException", "SlowDown", "TooManyRequests",
    "InternalError", "ServiceUnavailable", "RequestLimitExceeded",
})


def _loaded_types(table: dict[str, tuple[str, ...]]) -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = []
    for module_name, names in table.items():
        module = sys.modules.get(module_name)
        found.extend(getattr(module, name) for name in names if module is not None and hasattr(module, name))
    return tuple(found)


def _status_is_transient(err: BaseException) -> bool:
    response = getattr(err, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = response.get("Error", {}).get("Code")
        return status in TRANSIENT_HTTP_STATUS or code in TRANSIENT_SERVICE_CODES
    return getattr(err, "code", None) in TRANSIENT_HTTP_STATUS  # gcsfs HttpError


def is_transient(err: BaseException) -> bool:
    """Whether another try may succeed: network, timeout and throttling errors, not missing/forbidden/full."""
    if isinstance(err, PERSISTENT_OS_ERRORS):
        return False
    if isinstance(err, _loaded_types(STATUS_ERROR_TYPES)):
        return _status_is_transient(err)
    if isinstance(err, OSError):
        return err.errno not in PERSISTENT_ERRNOS
    return isinstance(err, _loaded_types(TRANSIENT_TYPES))


def _precondition_failed(err: BaseException, version: str | None) -> bool:
    """Whether a conditional PUT was refused because the object changed (HTTP 412, or s3fs's translation)."""
    if version is None and isinstance(err, FileExistsError):  # If-None-Match: * found an object
        return True
    if version is not None and isinstance(err, FileNotFoundError):  # If-Match found none: it was deleted
        return True
    response = getattr(err.__cause__, "response", None)
    if not isinstance(response, dict):
        return False
    return (response.get("Error", {}).get("Code") == "PreconditionFailed"
            or response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412)


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter. ``sleep`` and ``rand`` are injectable so tests run fast."""

    tries: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    #: Each delay is scaled by a random factor in [1 - jitter, 1], so many VMs do not retry in step.
    jitter: float = 0.5
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    rand: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def delay(self, retry: int) -> float:
        ceiling = min(self.max_delay, self.base_delay * 2**retry)
        return ceiling * (1 - self.jitter * self.rand())

    def call(self, what: str, action: Callable[[], T]) -> T:
        """Run ``action``; retry transient errors; raise :class:`StorageError` when they outlast the tries."""
        for attempt in range(1, self.tries + 1):
            try:
                return action()
            except Exception as err:  # noqa: BLE001 - classified by is_transient; everything else is re-raised
                if not is_transient(err):
                    raise
                if attempt == self.tries:
                    raise StorageError(f"{what} failed after {self.tries} tries: {type(err).__name__}: {err}") from err
                pause = self.delay(attempt - 1)
                log.warning("%s failed (%s: %s); retry %d of %d in %.2fs", what, type(err).__name__, err,
                            attempt, self.tries - 1, pause)
                self.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


# -- paths ---------------------------------------------------------------------------------------
def sha256_stream(handle: Any, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    while block := handle.read(chunk):
        digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str) -> str:
    with open(path, "rb") as handle:
        return sha256_stream(handle)


def safe_relpath(relpath: str) -> str:
    """Reject store keys that would escape the checkpoint directory on restore (or cannot be a file name).

    Refused: empty keys, absolute keys, ``.``/``..``/empty components, backslashes, NUL, keys that are not
    valid UTF-8 text (lone surrogates), over-long components, and keys inside the store's control directory.
    """
    if not isinstance(relpath, str) or not relpath:
        raise ValueError(f"refusing checkpoint path {relpath!r}: it is empty or not a string")
    parts = relpath.split("/")
    if relpath.startswith("/") or "\\" in relpath or "\x00" in relpath or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"refusing checkpoint path {relpath!r}: it is absolute or escapes the directory")
    try:
        too_long = any(len(p.encode("utf-8")) > MAX_NAME_BYTES for p in parts)
    except UnicodeEncodeError:
        raise ValueError(f"refusing checkpoint path {relpath!r}: it is not valid UTF-8 text") from None
    if too_long:
        raise ValueError(f"refusing checkpoint path {relpath!r}: a component is longer than {MAX_NAME_BYTES} bytes")
    if parts[0] == CONTROL_DIR:
        raise ValueError(f"refusing checkpoint path {relpath!r}: it is inside the store's control directory")
    return relpath


@dataclass
class Manifest:
    """Files published to the store: ``relpath -> {size, sha256, attempt, time, source}``."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The stored version this was read from (S3: the ETag; None: there was no manifest). Writing it back
    #: replaces only that version (:class:`ManifestChanged` otherwise). Not part of the JSON.
    read_as: Any = field(default=UNCONDITIONAL, compare=False, repr=False)

    def to_json(self) -> str:
        return json.dumps({"version": 1, "files": self.files}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        return cls(files=dict(data.get("files", {})))

    def newest_attempt(self) -> int:
        """The highest attempt number that published an entry (0 for an empty manifest)."""
        attempts = [e.get("attempt") for e in self.files.values() if isinstance(e, dict)]
        return max((a for a in attempts if isinstance(a, int) and not isinstance(a, bool)), default=0)


class CheckpointStore:
    """A checkpoint prefix on an fsspec filesystem."""

    def __init__(self, fs: Any, root: str, retry: RetryPolicy | None = None) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.retry = retry or RetryPolicy()

    @classmethod
    def from_uri(cls, uri: str, retry: RetryPolicy | None = None, **storage_options: Any) -> CheckpointStore:
        """Build from a URI with the environment's own credentials (the agent's path)."""
        import fsspec

        fs, root = fsspec.core.url_to_fs(uri, **storage_options)
        return cls(fs, root, retry)

    @property
    def _protocols(self) -> tuple[str, ...]:
        return self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)

    @property
    def renames_atomically(self) -> bool:
        """A local disk: renames are atomic and ``flock`` works (see :meth:`fence_guard`)."""
        return "file" in self._protocols or "local" in self._protocols

    @property
    def conditional_writes(self) -> bool:
        """S3 honours ``If-None-Match: *`` and ``If-Match: <etag>`` on PutObject (moto too).

        Not used on GCS: gcsfs offers only create-only uploads, and the emulator ignores preconditions.
        """
        return "s3" in self._protocols or "s3a" in self._protocols

    @contextlib.contextmanager
    def fence_guard(self, exclusive: bool = False) -> Iterator[None]:
        """On a local disk: hold ``.spot/fence.lock`` (``flock``), exclusively to raise the fence, shared
        from a sync's fence check to its move or manifest write. Once :meth:`raise_fence` returned, no
        attempt below the fence moves a file into place or writes the manifest any more. Object stores
        have no lock: there the fence and manifest writes are conditional instead. Re-entrant per thread.
        """
        if not self.renames_atomically:
            yield
            return
        path = self.path(FENCE_LOCK)
        held: dict[str, bool] = _HELD.__dict__.setdefault("locks", {})
        if path in held:
            if exclusive and not held[path]:
                raise RuntimeError("the fence lock is held shared by this thread: it cannot be upgraded")
            yield
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            held[path] = exclusive
            try:
                yield
            finally:
                del held[path]
        finally:
            os.close(fd)  # releases the lock

    def path(self, relpath: str) -> str:
        return posixpath.join(self.root, relpath)

    # -- files ---------------------------------------------------------------------------------
    def stage_file(self, local_path: str, relpath: str, attempt: int = 0) -> str:
        """Upload to a fresh staging key and check its size; returns the staging key (store-relative)."""
        staging = f"{STAGING_DIR}/{attempt:04d}-{uuid.uuid4().hex}/{relpath}"  # parsed by staging_attempt()
        target = self.path(staging)
        size = os.stat(local_path).st_size

        def upload() -> None:
            self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
            self.fs.put_file(local_path, target)
            stored = self.fs.size(target)
            if stored != size:  # a truncated upload that reported success: upload it again
                raise OSError(errno.EIO, f"staged {relpath} has {stored} bytes, expected {size}")

        self.retry.call(f"upload of {relpath}", upload)
        return staging

    def commit_file(self, staging: str, relpath: str) -> None:
        """Move a verified staging object to its final name (atomic per object on every backend)."""
        source, target = self.path(staging), self.path(relpath)

        def move() -> None:
            self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
            try:
                self.fs.mv(source, target)
            except FileNotFoundError:
                # A retried move whose first try did land (the copy and delete went through, the reply did not).
                if not self.fs.exists(source) and self.fs.exists(target):
                    return
                raise

        self.retry.call(f"move of {relpath} to its final name", move)

    def discard_staged(self, staging: str) -> None:
        """Drop this process's own unpublished staging object (best effort: leftovers are harmless)."""
        try:
            self.fs.rm_file(self.path(staging))
        except OSError as err:
            log.info("could not remove staging object %s: %s", staging, err)

    @staticmethod
    def staging_attempt(name: str) -> int | None:
        """The attempt of a staging directory ``NNNN-<uuid>`` (None for anything else)."""
        number, dash, _ = name.partition("-")
        return int(number) if dash and number.isdigit() else None

    def remove_staging(self, below: int) -> list[str]:
        """Delete the staging directories of attempts below ``below`` (leftovers of uploads killed mid-way,
        and on local disks the empty directories of moved ones). Returns their names."""
        root = self.path(STAGING_DIR)
        self.fs.invalidate_cache(root)

        def listing() -> list[str]:
            try:
                return [posixpath.basename(str(p).rstrip("/")) for p in self.fs.ls(root, detail=False)]
            except FileNotFoundError:
                return []

        removed = []
        for name in sorted(self.retry.call("listing of staging uploads", listing)):
            attempt = self.staging_attempt(name)
            if attempt is None or attempt >= below:
                continue  # an attempt at or above the fence may be uploading right now
            self.retry.call(f"removal of staging upload {name}", lambda n=name: self._rm(posixpath.join(root, n)))
            removed.append(name)
        return removed

    def _rm(self, path: str, recursive: bool = True) -> None:
        try:
            if recursive:
                self.fs.rm(path, recursive=True)
            else:  # exactly this key (on S3 a recursive rm of ``ckpt-1`` would also match ``ckpt-1/…``)
                self.fs.rm_file(path)
        except FileNotFoundError:
            pass

    def remove(self, relpaths: list[str]) -> None:
        """Delete published files; their manifest entries must be gone already (retention only). Missing
        files are fine; on local disks, directories left empty are removed too."""
        for relpath in relpaths:
            path = self.path(safe_relpath(relpath))
            self.retry.call(f"removal of {relpath}", lambda p=path: self._rm(p, recursive=False))
            parent = posixpath.dirname(relpath)
            while parent and self.renames_atomically:
                try:
                    self.fs.rmdir(self.path(parent))
                except OSError:  # not empty (or gone): leave it
                    break
                parent = posixpath.dirname(parent)

    def sha256(self, relpath: str) -> str | None:
        """SHA-256 of a stored file, streamed from the store (None when it is missing)."""
        def digest() -> str | None:
            try:
                with self.fs.open(self.path(relpath), "rb") as handle:
                    return sha256_stream(handle)
            except (FileNotFoundError, IsADirectoryError):
                return None

        return self.retry.call(f"checksum of {relpath}", digest)

    def exists(self, relpath: str) -> bool:
        path = self.path(relpath)
        self.fs.invalidate_cache(path)
        return self.retry.call(f"lookup of {relpath}", lambda: self.fs.exists(path))

    def get_file(self, relpath: str, local_path: str) -> None:
        self.retry.call(f"download of {relpath}", lambda: self.fs.get_file(self.path(relpath), local_path))

    def _write_text(self, relpath: str, text: str) -> None:
        """Write a small control object; on file systems with rename, readers never see half of it."""
        target = self.path(relpath)

        def write() -> None:
            self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
            if self.renames_atomically:
                tmp = f"{target}.{uuid.uuid4().hex}.tmp"
                self.fs.pipe_file(tmp, text.encode())
                self.fs.mv(tmp, target)
            else:  # object stores publish a single PUT atomically
                self.fs.pipe_file(target, text.encode())

        self.retry.call(f"write of {relpath}", write)

    def _read_text(self, relpath: str) -> str | None:
        def read() -> str | None:
            try:
                return self.fs.cat_file(self.path(relpath)).decode()
            except FileNotFoundError:
                return None

        return self.retry.call(f"read of {relpath}", read)

    def write_json(self, relpath: str, data: dict[str, Any]) -> None:
        """A small JSON record under the control directory (the ledger's mirror), written whole."""
        self._write_text(relpath, json.dumps(data, sort_keys=True))

    def read_json(self, relpath: str) -> dict[str, Any] | None:
        text = self._read_text(relpath)
        return json.loads(text) if text else None

    def _read_versioned(self, relpath: str) -> tuple[str | None, str | None]:
        """A control object and its version (the S3 ETag; None when absent or without conditional writes).

        The version is looked up before the body is read: a body newer than its version can only make the
        conditional write fail (and be read again), never let it replace something it did not see.
        """
        if not self.conditional_writes:
            return self._read_text(relpath), None
        path = self.path(relpath)

        def version() -> str | None:
            try:
                return self.fs.info(path, refresh=True).get("ETag")
            except FileNotFoundError:
                return None

        tag = self.retry.call(f"lookup of {relpath}", version)
        return self._read_text(relpath), tag

    def _write_if(self, relpath: str, text: str, version: str | None) -> bool:
        """Write a control object only if it is still at ``version`` (None: only if there is none).

        False when another writer changed it first. Without conditional writes a plain write (on a local
        disk the caller holds :meth:`fence_guard`, which makes the read-compare-write atomic).
        """
        if not self.conditional_writes:
            self._write_text(relpath, text)
            return True
        path = self.path(relpath)
        condition = {"mode": "create"} if version is None else {"IfMatch": version}
        try:
            self.retry.call(f"conditional write of {relpath}", lambda: self.fs.pipe_file(path, text.encode(),
                                                                                        **condition))
        except OSError as err:
            if _precondition_failed(err, version):
                return False
            raise
        return True

    # -- manifest ------------------------------------------------------------------------------
    def read_manifest(self, versioned: bool = False) -> Manifest:
        """The published manifest. ``versioned``: also note the stored version (on S3 one more request), so
        that writing it back replaces only that version."""
        if not versioned:
            text = self._read_text(MANIFEST)
            return Manifest.from_json(text) if text else Manifest()
        text, version = self._read_versioned(MANIFEST)
        manifest = Manifest.from_json(text) if text else Manifest()
        manifest.read_as = version
        return manifest

    def latest_published(self, pattern: str, attempt: int) -> tuple[str | None, float | None]:
        """The newest published checkpoint (by step), and when ``attempt``'s newest published file was last
        modified (None: it published nothing): what the ledger records when an attempt is released."""
        files = self.read_manifest().files
        mine = [e.get("mtime") or e.get("time") for e in files.values() if e.get("attempt") == attempt]
        return latest_name({top_level(p) for p in files}, pattern), max(mine) if mine else None

    def write_manifest(self, manifest: Manifest) -> None:
        """Write the manifest. One that was read replaces only the version it was read from: if another
        writer replaced it meanwhile, :class:`ManifestChanged` is raised (see :meth:`update_manifest`)."""
        if manifest.read_as is UNCONDITIONAL:
            self._write_text(MANIFEST, manifest.to_json())
        elif not self._write_if(MANIFEST, manifest.to_json(), manifest.read_as):
            raise ManifestChanged("the manifest was replaced after it was read")

    def update_manifest(self, change: Callable[[Manifest], bool]) -> Manifest:
        """Read the manifest, let ``change`` edit it in place, write it back; on a lost race read it again.

        ``change`` returns False when there is nothing to write; what it raises (``FencedError``) propagates.
        On a local disk the whole round holds :meth:`fence_guard` (shared), so a fence raise cannot fall
        between ``change``'s fence check and the write; on S3 the write is conditional.
        """
        for _ in range(CAS_ROUNDS):
            with self.fence_guard():
                manifest = self.read_manifest(versioned=True)
                if not change(manifest):
                    return manifest
                try:
                    self.write_manifest(manifest)
                    return manifest
                except ManifestChanged:
                    log.info("the manifest changed while it was being updated: reading it again")
        raise StorageError(f"the manifest kept changing: {CAS_ROUNDS} updates in a row lost to other writers")

    # -- fencing -------------------------------------------------------------------------------
    @staticmethod
    def _fence_level(text: str | None) -> int:
        return int(json.loads(text)["attempt"]) if text else 0

    def read_fence(self) -> int:
        """The explicit fence: attempts below it may not publish (0 when none was raised)."""
        return self._fence_level(self._read_text(FENCE))

    def last_attempt(self) -> int:
        """The highest attempt number this prefix has seen: fence, manifest entries, marker directories.

        Attempt numbers are unique per prefix, not per task: a new DAG run that reuses the prefix (to
        continue from its checkpoints) numbers its attempts after these, so its markers never collide with
        an older run's and the fence never refuses it.
        """
        try:
            names = self.fs.ls(self.path(f"{CONTROL_DIR}/attempts"), detail=False)
        except FileNotFoundError:
            names = []
        dirs = [int(n) for n in (posixpath.basename(str(p).rstrip("/")) for p in names) if n.isdigit()]
        return max([self.read_fence(), self.read_manifest().newest_attempt(), *dirs])

    def raise_fence(self, attempt: int) -> int:
        """Fence off every attempt below ``attempt``; the fence only ever goes up. Returns the fence.

        The operator calls this right before it launches attempt N, which is after the backup-save of
        attempt N-1: backup-save runs as attempt N-1 and is fenced like the agent, so doing it first is
        what lets it publish.

        A compare-and-swap where the store allows one: on S3 the write is conditional on the version read
        (``If-None-Match: *`` / ``If-Match: <etag>``), on a local disk it holds :meth:`fence_guard`
        exclusively; a concurrent writer that raised the fence higher is never overwritten. On other
        stores (GCS) it is a plain read-then-write: one operator at a time raises the fence.

        Without a raised fence, a stale attempt is still stopped once a newer attempt has published a
        manifest entry (see :meth:`DirectorySync.check_fence`); the fence closes the gap before that.
        """
        with self.fence_guard(exclusive=True):
            for _ in range(CAS_ROUNDS):
                text, version = self._read_versioned(FENCE)
                current = self._fence_level(text)
                if attempt <= current:
                    return current
                if self._write_if(FENCE, json.dumps({"attempt": attempt, "time": time.time()}), version):
                    return attempt
                log.info("the fence changed while attempt %d raised it: reading it again", attempt)
        raise StorageError(f"the fence kept changing: {CAS_ROUNDS} conditional writes in a row lost")

    # -- markers -------------------------------------------------------------------------------
    @staticmethod
    def marker_dir(attempt: int) -> str:
        return f"{CONTROL_DIR}/attempts/{attempt:04d}"

    def write_marker(self, attempt: int, marker: Marker, data: dict[str, Any] | None = None) -> dict[str, Any]:
        record = {"time": time.time(), **(data or {})}
        self._write_text(f"{self.marker_dir(attempt)}/{Marker(marker).file}", json.dumps(record, sort_keys=True))
        return record

    def write_attempt_log(self, attempt: int, text: bytes) -> None:
        """The attempt's output so far (replaced whole: object stores cannot append)."""
        self._write_text(f"{self.marker_dir(attempt)}/{ATTEMPT_LOG}", text.decode(errors="replace"))

    def read_attempt_log(self, attempt: int) -> str | None:
        return self._read_text(f"{self.marker_dir(attempt)}/{ATTEMPT_LOG}")

    def read_marker(self, attempt: int, marker: Marker) -> dict[str, Any] | None:
        return self.read_json(f"{self.marker_dir(attempt)}/{Marker(marker).file}")

    def read_markers(self, attempt: int) -> dict[str, dict[str, Any]]:
        """All markers of one attempt, by name (missing markers are absent).

        A read error other than "not found" is retried and then raised: a marker that failed to load
        must not look absent (an attempt whose exit marker vanished would be classified as lost).
        """
        paths = {self.path(f"{self.marker_dir(attempt)}/{marker.file}"): marker.value for marker in Marker}

        def read() -> dict[str, bytes]:
            found = self.fs.cat(list(paths), on_error="return")  # one batched call on object stores
            for value in found.values():
                if isinstance(value, BaseException) and not isinstance(value, FileNotFoundError):
                    raise value
            return {p: v for p, v in found.items() if isinstance(v, bytes) and v}

        found = self.retry.call(f"read of attempt {attempt}'s markers", read)
        return {paths[p]: json.loads(data) for p, data in found.items()}
