"""Checkpoint integrity: killed uploads, corruption, fencing of stale attempts, two writers at once,
retention, storage faults and retries.

Everything runs on real fsspec filesystems (``file``, ``memory``, and ``s3`` against moto) and the real
agent. Faults come from :class:`FaultyMemoryFS`, a memory filesystem that fails chosen calls; races from
:class:`Hooks`, which let a second writer act in the middle of the first one's check-then-write. Both work
in the storage layer: the code under test (store, sync, restore, retention, agent) is unchanged.
"""

from __future__ import annotations

import errno
import os
import posixpath
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from airflow_spot_provider.agent.config import AgentConfig
from airflow_spot_provider.agent.runner import AGENT_ERROR_EXIT, FENCED_EXIT, AttemptRunner, main
from airflow_spot_provider.attempt import AttemptStatus, InstanceFacts, InstanceState, Markers, classify
from airflow_spot_provider.checkpoints.retention import apply_retention
from airflow_spot_provider.checkpoints.store import (
    FENCE_LOCK,
    STAGING_DIR,
    CheckpointStore,
    FencedError,
    RetryPolicy,
    StorageError,
    is_transient,
    sha256_file,
)
from airflow_spot_provider.checkpoints.sync import DirectorySync, restore

from .conftest import REPO
from .waiting import wait_for

PATTERN = r"ckpt-(?P<step>\d+)"
FOREVER = -1


class FaultyMemoryFS(MemoryFileSystem):
    """A memory filesystem whose chosen methods fail: ``faults[method] = n`` fails the next n calls.

    ``half_writes = n`` makes the next n uploads write half of the bytes and then drop the connection;
    ``truncations = n`` makes them write half of the bytes and report success.
    ``before_put`` runs before each upload (to let another writer act in the middle of a sync).
    ``fault_paths``: when set, only calls on paths containing it fail (and count).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, skip_instance_cache=True, **kwargs)
        self.faults: dict[str, int] = {}
        self.fault_paths: str | None = None
        self.half_writes = 0
        self.truncations = 0
        self.before_put: Callable[[str], None] | None = None

    def _maybe_fail(self, method: str, path: str) -> None:
        left = self.faults.get(method, 0)
        if left and (self.fault_paths is None or self.fault_paths in str(path)):
            self.faults[method] = left - 1 if left > 0 else FOREVER
            raise ConnectionResetError(errno.ECONNRESET, f"injected: connection reset during {method}", path)

    def put_file(self, lpath, rpath, *args, **kwargs):
        if self.before_put:
            self.before_put(rpath)
        self._maybe_fail("put_file", rpath)
        if self.half_writes or self.truncations:
            data = Path(lpath).read_bytes()
            with self.open(rpath, "wb") as handle:
                handle.write(data[: len(data) // 2])
            if self.truncations:
                self.truncations -= 1
                return None
            self.half_writes -= 1 if self.half_writes > 0 else 0
            raise ConnectionResetError(errno.ECONNRESET, "injected: connection dropped halfway", rpath)
        return super().put_file(lpath, rpath, *args, **kwargs)

    def pipe_file(self, path, *args, **kwargs):
        self._maybe_fail("pipe_file", path)
        return super().pipe_file(path, *args, **kwargs)

    def get_file(self, rpath, lpath, *args, **kwargs):
        self._maybe_fail("get_file", rpath)
        return super().get_file(rpath, lpath, *args, **kwargs)

    def cat_file(self, path, *args, **kwargs):
        self._maybe_fail("cat_file", path)
        return super().cat_file(path, *args, **kwargs)

    def rm_file(self, path, *args, **kwargs):
        self._maybe_fail("rm_file", path)
        return super().rm_file(path, *args, **kwargs)


class Sleeps(list):
    """Records backoff delays instead of sleeping: the tests stay fast, the delays stay checkable."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def fast_retry(sleeps: Sleeps | None = None, tries: int = 3) -> RetryPolicy:
    return RetryPolicy(tries=tries, base_delay=0.01, max_delay=0.04, sleep=sleeps if sleeps is not None else Sleeps())


def memory_store(retry: RetryPolicy | None = None) -> tuple[CheckpointStore, FaultyMemoryFS]:
    fs = FaultyMemoryFS()
    root = f"/integrity-{uuid.uuid4().hex}"  # the memory filesystem is shared by the whole process
    return CheckpointStore(fs, root, retry or fast_retry()), fs


@pytest.fixture(params=["file", "memory"])
def store(request, tmp_path) -> CheckpointStore:
    if request.param == "file":
        yield CheckpointStore.from_uri(f"file://{tmp_path}/store", retry=fast_retry())
        return
    made, fs = memory_store()
    yield made
    fs.rm(made.root, recursive=True)


@pytest.fixture
def sigterm_handler():
    """AttemptRunner.run() installs a SIGTERM handler in this process: put the old one back."""
    old = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, old)


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def stored(store: CheckpointStore, relpath: str) -> bytes | None:
    try:
        return store.fs.cat_file(store.path(relpath))
    except FileNotFoundError:
        return None


def agent_config(tmp_path: Path, name: str, attempt: int, command: list[str], uri: str, **extra) -> AgentConfig:
    return AgentConfig(attempt=attempt, instance_id=f"i-{name}", command=command, checkpoint_uri=uri,
                       work_dir=str(tmp_path / name), checkpoint_pattern=PATTERN, sync_interval=0.2, **extra)


# -- half-written uploads ------------------------------------------------------------------------
SLOW_SYNC = textwrap.dedent("""
    import sys, time
    from fsspec.implementations.local import LocalFileSystem
    from airflow_spot_provider.checkpoints.store import CheckpointStore
    from airflow_spot_provider.checkpoints.sync import DirectorySync

    class SlowDisk(LocalFileSystem):
        def put_file(self, lpath, rpath, **kwargs):  # 64 KiB at a time: slow enough to be killed halfway
            with open(lpath, "rb") as src, open(rpath, "wb") as dst:
                while chunk := src.read(1 << 16):
                    dst.write(chunk)
                    dst.flush()
                    time.sleep(0.02)

    local, root = sys.argv[1:3]
    store = CheckpointStore(SlowDisk(skip_instance_cache=True), root)
    DirectorySync(local, store, 1, r"ckpt-(?P<step>\\d+)").sync()
""")


def test_upload_killed_mid_write_is_never_restored(tmp_path):
    root, local = tmp_path / "store", tmp_path / "vm"
    store = CheckpointStore.from_uri(f"file://{root}")
    write(local / "ckpt-1", b"one" * 1000)
    DirectorySync(local, store, 1, PATTERN).sync()
    big = os.urandom(4 << 20)
    write(local / "ckpt-2", big)
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SYNC, str(local), str(root)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def partial_upload():
            staged = [p for p in (root / ".spot" / "staging").rglob("ckpt-2") if p.is_file()]
            return staged if staged and 0 < staged[0].stat().st_size < len(big) else None

        [partial] = wait_for(partial_upload, what="a half-written upload")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert 0 < partial.stat().st_size < len(big)
    # The half-written bytes exist only under a staging key: never at the final name, never in the manifest.
    assert not (root / "ckpt-2").exists()
    assert set(store.read_manifest().files) == {"ckpt-1"}
    result = restore(store, tmp_path / "restored", PATTERN)
    assert result.resume_from == "ckpt-1" and not (tmp_path / "restored" / "ckpt-2").exists()
    # The next sync (a later round or backup-save) publishes the whole file; the leftover is not in its way.
    DirectorySync(local, store, 1, PATTERN).sync()
    again = restore(store, tmp_path / "restored-again", PATTERN)
    assert again.resume_from == "ckpt-2" and (tmp_path / "restored-again" / "ckpt-2").read_bytes() == big


def test_upload_that_keeps_dropping_halfway_is_never_published(tmp_path):
    store, fs = memory_store()
    local = tmp_path / "vm"
    write(local / "ckpt-1", "one")
    DirectorySync(local, store, 1, PATTERN).sync()
    write(local / "ckpt-2", b"x" * 10_000)
    fs.half_writes = FOREVER
    with pytest.raises(StorageError, match=r"upload of ckpt-2 failed after 3 tries: ConnectionResetError"):
        DirectorySync(local, store, 1, PATTERN).sync()
    assert stored(store, "ckpt-2") is None and set(store.read_manifest().files) == {"ckpt-1"}
    assert restore(store, tmp_path / "restored", PATTERN).resume_from == "ckpt-1"


@pytest.mark.parametrize("fault", ["half_writes", "truncations"])
def test_a_broken_upload_is_sent_again_whole(tmp_path, fault):
    store, fs = memory_store()
    write(tmp_path / "vm" / "ckpt-1", b"y" * 5000)
    setattr(fs, fault, 1)  # the first upload breaks off halfway (with an error, or silently): it is sent again
    assert DirectorySync(tmp_path / "vm", store, 1, PATTERN).sync().uploaded == ["ckpt-1"]
    assert stored(store, "ckpt-1") == b"y" * 5000
    assert store.read_manifest().files["ckpt-1"]["sha256"] == sha256_file(str(tmp_path / "vm" / "ckpt-1"))


# -- corruption ----------------------------------------------------------------------------------
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, store):
    local = tmp_path / "vm"
    for step in (1, 2):
        write(local / f"ckpt-{step}" / "weights", f"weights {step}" * 100)
        write(local / f"ckpt-{step}" / "optimizer", f"optimizer {step}" * 100)
    write(local / "vocab.json", "{}")
    DirectorySync(local, store, 1, PATTERN).sync()
    data = bytearray(stored(store, "ckpt-2/optimizer"))
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, different content
    store.fs.pipe_file(store.path("ckpt-2/optimizer"), bytes(data))
    dst = tmp_path / "restored"
    result = restore(store, dst, PATTERN)
    assert result.resume_from == "ckpt-1"
    assert result.rejected == ["ckpt-2/optimizer"]
    assert sorted(result.files) == ["ckpt-1/optimizer", "ckpt-1/weights", "ckpt-2/weights", "vocab.json"]
    assert not (dst / "ckpt-2" / "optimizer").exists()
    assert not [p for p in dst.rglob("*") if p.name.endswith(".tmp")]


def test_a_manifest_entry_whose_object_is_gone_falls_back(tmp_path, store):
    local = tmp_path / "vm"
    write(local / "ckpt-1", "one")
    write(local / "ckpt-2", "two")
    DirectorySync(local, store, 1, PATTERN).sync()
    store.fs.rm_file(store.path("ckpt-2"))
    result = restore(store, tmp_path / "restored", PATTERN)
    assert result.resume_from == "ckpt-1" and result.rejected == ["ckpt-2"]


def test_restore_never_writes_through_a_symlink_in_the_local_dir(tmp_path, store):
    local, outside = tmp_path / "vm", tmp_path / "outside"
    write(local / "ckpt-1" / "w", "one")
    write(local / "ckpt-2" / "w", "two")
    DirectorySync(local, store, 1, PATTERN).sync()
    dst = tmp_path / "restored"
    dst.mkdir()
    outside.mkdir()
    (dst / "ckpt-2").symlink_to(outside, target_is_directory=True)  # planted on the "disk"
    result = restore(store, dst, PATTERN)
    assert result.resume_from == "ckpt-1" and "ckpt-2/w" in result.rejected
    assert list(outside.iterdir()) == []


def test_nothing_published_is_ever_deleted(tmp_path, store):
    local = tmp_path / "vm"
    write(local / "ckpt-1", "one")
    sync = DirectorySync(local, store, 1, PATTERN)
    sync.sync()
    (local / "ckpt-1").unlink()  # the job cleans up old checkpoints on its disk
    write(local / "ckpt-2", "two")
    assert sync.sync().uploaded == ["ckpt-2"]
    assert set(store.read_manifest().files) == {"ckpt-1", "ckpt-2"} and stored(store, "ckpt-1") == b"one"


# -- fencing -------------------------------------------------------------------------------------
STALE_JOB = textwrap.dedent("""
    import os, pathlib, signal, sys, time
    ckpt = pathlib.Path(os.environ["SPOT_CHECKPOINT_DIR"])
    def stop(*_):
        pathlib.Path("got-sigterm").write_text("1")
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    (ckpt / "ckpt-1").write_text("stale 1")
    go = pathlib.Path(sys.argv[1])
    while not go.exists():
        time.sleep(0.05)
    (ckpt / "ckpt-2").write_text("stale 2")  # the same name the newer attempt published
    (ckpt / "ckpt-10").write_text("stale 10")  # a step the newer attempt has not reached (uploaded first)
    pathlib.Path("wrote-late-checkpoints").write_text("1")
    time.sleep(60)
""")
NEW_JOB = "import os, pathlib; (pathlib.Path(os.environ['SPOT_CHECKPOINT_DIR']) / 'ckpt-2').write_text('fresh 2')"


@pytest.fixture
def stale_agent(tmp_path):
    """Attempt 1's real agent in its own process group (its "VM"), killed whatever the test does."""
    started: list[tuple[subprocess.Popen, object]] = []

    def start(config: AgentConfig) -> subprocess.Popen:
        path = tmp_path / f"{config.instance_id}.json"
        path.write_text(config.to_json())
        log = open(tmp_path / f"{config.instance_id}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "airflow_spot_provider.agent", str(path)], cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        started.append((proc, log))
        return proc

    yield start
    for proc, log in started:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the agent and its job: one process group
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()


@pytest.mark.parametrize("fence", ["raised", "implicit"])
def test_stale_attempt_cannot_replace_a_newer_attempts_files_and_stops(tmp_path, stale_agent, sigterm_handler,
                                                                       fence):
    uri = f"file://{tmp_path}/store"
    store = CheckpointStore.from_uri(uri)
    go = tmp_path / "go"
    stale = stale_agent(agent_config(tmp_path, "stale", 1, [sys.executable, "-c", STALE_JOB, str(go)], uri))
    wait_for(lambda: "ckpt-1" in store.read_manifest().files, what="attempt 1's first checkpoint")

    # Attempt 1's VM freezes (SIGSTOP: a partitioned or hung VM) and is believed dead. The operator raises
    # the fence and attempt 2 runs to completion. With "implicit", no fence is raised (an operator that
    # crashed before it): attempt 2's manifest entries are what attempt 1 finds.
    os.kill(stale.pid, signal.SIGSTOP)
    try:
        if fence == "raised":
            assert store.raise_fence(2) == 2
        newer = AttemptRunner(agent_config(tmp_path, "newer", 2, [sys.executable, "-c", NEW_JOB], uri))
        assert newer.run() == 0
        published = store.read_manifest().files
        assert published["ckpt-2"]["attempt"] == 2 and published["ckpt-1"]["attempt"] == 1
        go.touch()  # the stale job writes ckpt-2 (over attempt 2's name) and ckpt-10 while its agent is frozen
        wait_for(lambda: (tmp_path / "stale" / "wrote-late-checkpoints").exists(), what="the stale job's writes")
    finally:
        os.kill(stale.pid, signal.SIGCONT)  # it wakes up with new files to sync
    assert stale.wait(timeout=20) == FENCED_EXIT
    log = (tmp_path / "i-stale.log").read_text()
    assert "fenced by attempt 2" in log
    after = store.read_manifest().files
    assert after["ckpt-2"] == published["ckpt-2"] and "ckpt-10" not in after
    assert stored(store, "ckpt-2") == b"fresh 2" and stored(store, "ckpt-10") is None
    markers = store.read_markers(1)
    assert markers["exit"]["fenced"] == 2 and "final-sync" not in markers
    assert (tmp_path / "stale" / "got-sigterm").exists()  # the job was told to stop
    result = restore(store, tmp_path / "next", PATTERN)
    assert result.resume_from == "ckpt-2" and (tmp_path / "next" / "ckpt-2").read_text() == "fresh 2"


@pytest.mark.parametrize("newer_leaves", ["fence", "manifest entry only"])
def test_a_newer_attempt_publishing_during_a_stale_upload_wins(tmp_path, newer_leaves):
    """The race the round-start check cannot see: the newer attempt acts while the stale file is in flight."""
    store, fs = memory_store()
    write(tmp_path / "newer" / "ckpt-2", "fresh 2")
    write(tmp_path / "stale" / "ckpt-2", "stale 2")

    def newer_attempt_publishes(rpath: str) -> None:
        fs.before_put = None
        if newer_leaves == "fence":
            store.raise_fence(2)
        DirectorySync(tmp_path / "newer", store, 2, PATTERN).sync()

    fs.before_put = newer_attempt_publishes
    with pytest.raises(FencedError, match="fenced by attempt 2"):
        DirectorySync(tmp_path / "stale", store, 1, PATTERN).sync()
    assert stored(store, "ckpt-2") == b"fresh 2"
    assert store.read_manifest().files["ckpt-2"]["attempt"] == 2
    assert not [p for p in fs.find(store.root) if "/.spot/staging/" in p]  # the stale upload was discarded


def test_backup_save_of_attempt_n_runs_before_the_fence_for_n_plus_1(tmp_path, store):
    disk = tmp_path / "dead-vm"
    write(disk / "ckpt-5", "saved from the disk")
    assert store.raise_fence(3) == 3 and store.raise_fence(2) == 3  # the fence only goes up
    # Operator order: backup-save of attempt 3 ...
    assert DirectorySync(disk, store, 3, PATTERN).sync("backup-save").uploaded == ["ckpt-5"]
    # ... then the fence for attempt 4; a backup-save of attempt 3 after that is refused.
    store.raise_fence(4)
    write(disk / "ckpt-6", "too late")
    with pytest.raises(FencedError):
        DirectorySync(disk, store, 3, PATTERN).sync("backup-save")
    assert "ckpt-6" not in store.read_manifest().files
    assert store.read_manifest().files["ckpt-5"]["source"] == "backup-save"


def test_an_attempt_launched_after_a_newer_one_never_runs_its_job(tmp_path, store, sigterm_handler):
    store.raise_fence(5)
    ran = tmp_path / "ran"
    command = [sys.executable, "-c", f"open({str(ran)!r}, 'w').write('1')"]
    runner = AttemptRunner(agent_config(tmp_path, "late", 4, command, "memory://unused"), store)
    assert runner.run() == FENCED_EXIT
    assert not ran.exists() and store.read_markers(4)["exit"]["fenced"] == 5


# -- compare-and-swap: two writers at once -------------------------------------------------------
BUCKET = "integrity"


class Hooks:
    """``fs.hooks[method] = (substring, action)``: ``action`` runs once, before the first ``method`` call on a
    path containing ``substring``, so another writer acts in the middle of this one's check-then-write."""

    hooks: dict[str, tuple[str, Callable[[], None]]]

    def _hook(self, method: str, path: str) -> None:
        found = self.hooks.get(method)
        if found and found[0] in str(path):
            del self.hooks[method]
            found[1]()


class HookedLocalFS(Hooks, LocalFileSystem):
    def pipe_file(self, path, value, *args, **kwargs):
        self._hook("pipe_file", path)
        return super().pipe_file(path, value, *args, **kwargs)

    def mv(self, path1, path2, *args, **kwargs):
        self._hook("mv", path1)
        return super().mv(path1, path2, *args, **kwargs)


def hooked_s3(**options):
    from fsspec.asyn import sync
    from s3fs import S3FileSystem

    class HookedS3FS(Hooks, S3FileSystem):
        def pipe_file(self, path, value, **kwargs):  # s3fs's own sync wrapper, with the hook in front
            self._hook("pipe_file", path)
            return sync(self.loop, self._pipe_file, path, value, **kwargs)

    return HookedS3FS(**options)


@pytest.fixture(scope="module")
def aws():
    from .aws_cloud import FakeAws

    with FakeAws() as fake:
        fake.client("s3").create_bucket(Bucket=BUCKET)
        yield fake


@pytest.fixture(params=["file", "s3"])
def two_writers(request, tmp_path) -> tuple[CheckpointStore, CheckpointStore]:
    """Two writers on one prefix: the first on a filesystem with hooks, the second a plain one."""
    if request.param == "file":
        root, options = str(tmp_path / "store"), {}
        fs = HookedLocalFS(skip_instance_cache=True)
    else:
        fake = request.getfixturevalue("aws")
        root = f"{BUCKET}/{uuid.uuid4().hex}"
        options = {"endpoint_url": fake.endpoint, "key": "x", "secret": "x", "skip_instance_cache": True}
        fs = hooked_s3(**options)
    fs.hooks = {}
    return (CheckpointStore(fs, root, fast_retry()),
            CheckpointStore.from_uri(f"{request.param}://{root}", retry=fast_retry(), **options))


def waits_for_fence_lock(store: CheckpointStore) -> bool:
    """Whether some thread is blocked on the store's fence lock (local disks; the kernel lists waiters)."""
    lock = Path(store.path(FENCE_LOCK))
    if not store.renames_atomically or not lock.exists():
        return False
    inode = f":{lock.stat().st_ino} "
    return any("->" in line and inode in line for line in Path("/proc/locks").read_text().splitlines())


class OtherWriter:
    """A hook that starts another writer in its own thread, and returns once that writer finished or is
    blocked on the fence lock (then it goes right after the first writer's critical section)."""

    def __init__(self, store: CheckpointStore, action: Callable[[], object]) -> None:
        self.store, self.action = store, action
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.action()
        except BaseException as err:  # noqa: BLE001 - handed to the test in finish()
            self.error = err
        finally:
            self.done.set()

    def __call__(self) -> None:
        self.thread.start()
        wait_for(lambda: self.done.is_set() or waits_for_fence_lock(self.store),
                 what="the other writer to finish or to wait for the fence lock")

    def finish(self) -> None:
        assert self.thread.is_alive() or self.done.is_set(), "the hook never ran"
        assert self.done.wait(timeout=60), "the other writer never finished"
        if self.error is not None:
            raise self.error


def assert_consistent(store: CheckpointStore) -> None:
    """Every manifest entry has its file, with the manifest's checksum."""
    for relpath, entry in store.read_manifest().files.items():
        assert store.sha256(relpath) == entry["sha256"], relpath


@pytest.mark.parametrize("start", [0, 1], ids=["no-fence-yet", "fence-at-1"])
def test_a_lower_fence_raise_racing_a_higher_one_never_lowers_it(two_writers, start):
    """Two operators raise the fence at once; the lower one has read the fence, the higher one writes first."""
    mine, other = two_writers
    if start:
        mine.raise_fence(start)  # then the compare is on a version (If-Match), not on absence (If-None-Match)
    higher = OtherWriter(other, lambda: other.raise_fence(5))
    mine.fs.hooks["pipe_file"] = ("fence.json", higher)
    got = mine.raise_fence(3)
    higher.finish()
    assert other.read_fence() == 5 and mine.raise_fence(4) == 5
    # Local disk: the higher raise waited for the lock, so 3 was written first. S3: the write of 3 was refused
    # (the fence changed since it was read), the fence was read again and found at 5.
    assert got == (3 if mine.renames_atomically else 5)


def test_a_stale_manifest_write_never_replaces_a_newer_attempts(two_writers, tmp_path):
    """The stale attempt checked the fence and is writing the manifest when the newer attempt takes over."""
    mine, other = two_writers
    write(tmp_path / "stale" / "ckpt-1", "stale 1")
    write(tmp_path / "newer" / "ckpt-2", "fresh 2")

    def newer_takes_over() -> None:
        other.raise_fence(2)
        DirectorySync(tmp_path / "newer", other, 2, PATTERN).sync()

    newer = OtherWriter(other, newer_takes_over)
    mine.fs.hooks["pipe_file"] = ("manifest.json", newer)
    try:
        DirectorySync(tmp_path / "stale", mine, 1, PATTERN).sync()
        fenced = False
    except FencedError:
        fenced = True
    newer.finish()
    files = other.read_manifest().files
    assert files["ckpt-2"]["attempt"] == 2 and stored(other, "ckpt-2") == b"fresh 2"
    if mine.renames_atomically:  # the fence raise waited for the stale write, which was checked before it
        assert not fenced and files["ckpt-1"]["attempt"] == 1
    else:  # the conditional write was refused; read again, the stale attempt found itself fenced
        assert fenced and "ckpt-1" not in files
    assert_consistent(other)


def test_a_stale_move_never_lands_after_the_fence_on_a_local_disk(tmp_path):
    """The stale file passed its last fence check and is being moved into place when the fence goes up."""
    root = tmp_path / "store"
    fs = HookedLocalFS(skip_instance_cache=True)
    fs.hooks = {}
    mine, other = CheckpointStore(fs, str(root), fast_retry()), CheckpointStore.from_uri(f"file://{root}")
    write(tmp_path / "stale" / "ckpt-2", "stale 2")
    write(tmp_path / "newer" / "ckpt-2", "fresh 2")

    def newer_takes_over() -> None:
        other.raise_fence(2)
        DirectorySync(tmp_path / "newer", other, 2, PATTERN).sync()

    newer = OtherWriter(other, newer_takes_over)
    fs.hooks["mv"] = (f"/{STAGING_DIR}/", newer)
    try:
        DirectorySync(tmp_path / "stale", mine, 1, PATTERN).sync()
    except FencedError:
        pass  # it reached the manifest after the fence went up: fenced there
    newer.finish()
    assert stored(other, "ckpt-2") == b"fresh 2"
    assert other.read_manifest().files["ckpt-2"]["attempt"] == 2
    assert_consistent(other)
    result = restore(other, tmp_path / "next", PATTERN)
    assert result.resume_from == "ckpt-2" and (tmp_path / "next" / "ckpt-2").read_text() == "fresh 2"


# -- storage faults ------------------------------------------------------------------------------
def test_transient_failures_are_retried_with_capped_jittered_backoff(tmp_path):
    sleeps = Sleeps()
    policy = RetryPolicy(tries=5, base_delay=0.01, max_delay=0.03, jitter=0.5, sleep=sleeps, rand=lambda: 1.0)
    store, fs = memory_store(policy)
    local = tmp_path / "vm"
    write(local / "ckpt-1" / "w", "one")
    write(local / "ckpt-1" / "opt", "opt")
    fs.faults = {"put_file": 3, "pipe_file": 2}  # the first 3 uploads and the first 2 manifest writes fail
    result = DirectorySync(local, store, 1, PATTERN).sync()
    assert sorted(result.uploaded) == ["ckpt-1/opt", "ckpt-1/w"]
    assert sleeps == [0.005, 0.01, 0.015, 0.005, 0.01]  # 0.01·2^n capped at 0.03, scaled by (1 - 0.5·rand)
    fs.faults = {"get_file": 2, "cat_file": 1}
    assert restore(store, tmp_path / "restored", PATTERN).resume_from == "ckpt-1"


def test_retry_policy_jitter_stays_within_bounds():
    policy = RetryPolicy(base_delay=1.0, max_delay=4.0, jitter=0.5)
    delays = [policy.delay(n) for n in range(6) for _ in range(50)]
    assert all(0.5 <= d <= 4.0 for d in delays) and len(set(delays)) > 10


def test_persistent_errors_are_not_retried_and_transient_ones_are(tmp_path):
    botocore = pytest.importorskip("botocore.exceptions")

    def client_error(code: str, status: int):
        return botocore.ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Put")

    transient = [ConnectionResetError(), TimeoutError(), OSError(errno.EIO, "io"), client_error("SlowDown", 503),
                 botocore.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
                 client_error("InternalError", 500)]
    persistent = [FileNotFoundError(), PermissionError(), OSError(errno.ENOSPC, "full"), ValueError("bad"),
                  client_error("AccessDenied", 403), StorageError("already retried")]
    assert [is_transient(e) for e in transient] == [True] * len(transient)
    assert [is_transient(e) for e in persistent] == [False] * len(persistent)
    calls = []

    def forbidden():
        calls.append(1)
        raise PermissionError("no")

    with pytest.raises(PermissionError):
        fast_retry().call("upload", forbidden)
    assert len(calls) == 1


def test_a_failing_marker_read_is_an_error_not_a_missing_marker(tmp_path):
    store, fs = memory_store()
    store.write_marker(1, "exit", {"code": 0})
    fs.faults = {"cat_file": 1}
    assert store.read_markers(1)["exit"]["code"] == 0  # one failure: retried
    fs.faults = {"cat_file": FOREVER}
    with pytest.raises(StorageError, match="markers"):
        store.read_markers(1)


def test_persistent_sync_failure_is_reported_in_the_exit_marker(tmp_path, sigterm_handler):
    store, fs = memory_store()
    fs.faults = {"put_file": FOREVER}  # checkpoint uploads never go through; markers do
    job = "import os, pathlib; (pathlib.Path(os.environ['SPOT_CHECKPOINT_DIR']) / 'ckpt-1').write_text('one')"
    runner = AttemptRunner(agent_config(tmp_path, "vm", 1, [sys.executable, "-c", job], "memory://x"), store)
    assert runner.run() == 0
    markers = store.read_markers(1)
    assert "started" in markers and "final-sync" not in markers
    assert markers["exit"]["code"] == 0 and markers["exit"]["final_sync"] is False
    assert markers["exit"]["sync_error"].startswith("StorageError: upload of ckpt-1 failed after 3 tries")
    assert (tmp_path / "vm" / "checkpoints" / "ckpt-1").exists()  # left on the disk for backup-save


def test_a_short_storage_outage_at_start_up_does_not_fail_the_attempt(tmp_path, sigterm_handler):
    store, fs = memory_store()
    fs.faults = {"pipe_file": 2, "cat_file": 1}  # the first reads and the started marker write fail once or twice
    job = "import os, pathlib; (pathlib.Path(os.environ['SPOT_CHECKPOINT_DIR']) / 'ckpt-1').write_text('one')"
    runner = AttemptRunner(agent_config(tmp_path, "vm", 1, [sys.executable, "-c", job], "memory://x"), store)
    assert runner.run() == 0
    markers = store.read_markers(1)
    assert {"started", "final-sync", "exit"} <= set(markers) and "sync_error" not in markers["exit"]
    assert stored(store, "ckpt-1") == b"one"


# -- retention -----------------------------------------------------------------------------------
def staging_names(store: CheckpointStore) -> list[str]:
    try:
        return sorted(posixpath.basename(p.rstrip("/")) for p in store.fs.ls(store.path(STAGING_DIR), detail=False))
    except FileNotFoundError:
        return []


def test_retention_removes_staging_leftovers_of_fenced_attempts_and_never_a_live_upload(tmp_path):
    store = CheckpointStore.from_uri(f"file://{tmp_path}/store", retry=fast_retry())
    disk = tmp_path / "vm"
    write(disk / "ckpt-1", "one")
    DirectorySync(disk, store, 1, PATTERN).sync()  # published: its staging directory is left behind, empty
    write(disk / "ckpt-2", b"2" * 5000)
    store.stage_file(str(disk / "ckpt-2"), "ckpt-2", 1)  # attempt 1 died before it moved this one
    dead = staging_names(store)
    store.raise_fence(2)
    live = store.stage_file(str(disk / "ckpt-2"), "ckpt-2", 2)  # attempt 2 is uploading right now
    assert len(dead) == 2 and all(name.startswith("0001-") for name in dead)

    result = apply_retention(store, PATTERN, keep=3)
    assert result.staging == dead and result.removed == []
    assert staging_names(store) == [live.split("/")[2]]
    store.commit_file(live, "ckpt-2")  # the live upload is whole and still moves into place
    assert stored(store, "ckpt-2") == b"2" * 5000


def test_retention_keeps_the_newest_n_checkpoints_and_every_file_that_is_not_one(tmp_path, store):
    disk = tmp_path / "vm"
    for step in range(1, 6):
        write(disk / f"ckpt-{step}" / "weights", f"weights {step}")
        write(disk / f"ckpt-{step}" / "optimizer", f"optimizer {step}")
    write(disk / "vocab.json", "{}")
    DirectorySync(disk, store, 1, PATTERN).sync()

    result = apply_retention(store, PATTERN, keep=2)
    assert result.kept == ["ckpt-5", "ckpt-4"] and result.removed == ["ckpt-3", "ckpt-2", "ckpt-1"]
    assert sorted(store.read_manifest().files) == [
        "ckpt-4/optimizer", "ckpt-4/weights", "ckpt-5/optimizer", "ckpt-5/weights", "vocab.json"]
    assert [stored(store, f"ckpt-{step}/weights") for step in (1, 2, 3)] == [None, None, None]
    if store.renames_atomically:  # no empty directories left behind on a local disk
        assert sorted(os.listdir(store.root)) == [".spot", "ckpt-4", "ckpt-5", "vocab.json"]
    assert_consistent(store)
    assert apply_retention(store, PATTERN, keep=2).removed == []  # nothing more to do
    result = restore(store, tmp_path / "restored", PATTERN)
    assert result.resume_from == "ckpt-5" and (tmp_path / "restored" / "vocab.json").exists()


def test_retention_keeps_the_newest_intact_checkpoint_when_the_newest_is_corrupt(tmp_path, store):
    disk = tmp_path / "vm"
    for step in (1, 2, 3):
        write(disk / f"ckpt-{step}", f"checkpoint {step}" * 100)
    DirectorySync(disk, store, 1, PATTERN).sync()
    data = bytearray(stored(store, "ckpt-3"))
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, different content
    store.fs.pipe_file(store.path("ckpt-3"), bytes(data))

    result = apply_retention(store, PATTERN, keep=1)
    assert result.verified == "ckpt-2"  # what restore picks: kept although it is not among the newest 1
    assert result.kept == ["ckpt-3", "ckpt-2"] and result.removed == ["ckpt-1"]
    restored = restore(store, tmp_path / "restored", PATTERN)
    assert restored.resume_from == "ckpt-2" and restored.rejected == ["ckpt-3"]


@pytest.mark.parametrize("cut", ["manifest write", "file removal"])
def test_a_retention_cut_short_never_leaves_a_manifest_entry_without_its_file(tmp_path, cut):
    store, fs = memory_store()
    disk = tmp_path / "vm"
    for step in (1, 2, 3):
        write(disk / f"ckpt-{step}", f"checkpoint {step}")
    DirectorySync(disk, store, 1, PATTERN).sync()
    before = store.read_manifest().files
    fs.faults = {"pipe_file" if cut == "manifest write" else "rm_file": FOREVER}
    with pytest.raises(StorageError):
        apply_retention(store, PATTERN, keep=1)
    fs.faults = {}
    assert_consistent(store)
    if cut == "manifest write":  # nothing was deleted
        assert store.read_manifest().files == before
    else:  # the entries went first: what is left are files no manifest names, never restored
        assert sorted(store.read_manifest().files) == ["ckpt-3"] and stored(store, "ckpt-1") == b"checkpoint 1"
    assert restore(store, tmp_path / "restored", PATTERN).resume_from == "ckpt-3"


def test_retention_never_drops_what_a_stale_attempt_publishes_meanwhile(two_writers, tmp_path):
    """Attempt 2 ended and was released, but its VM is alive after all and publishes during retention."""
    mine, other = two_writers
    disk = tmp_path / "vm"
    for step in (1, 2, 3):
        write(disk / f"ckpt-{step}", f"checkpoint {step}")
    other.raise_fence(2)
    stale = DirectorySync(disk, other, 2, PATTERN)
    stale.sync()
    write(disk / "ckpt-9", "checkpoint 9")
    late = OtherWriter(other, stale.sync)
    mine.fs.hooks["pipe_file"] = ("manifest.json", late)  # retention read the manifest and is writing it
    apply_retention(mine, PATTERN, keep=1)
    late.finish()
    files = other.read_manifest().files
    assert files["ckpt-9"]["attempt"] == 2 and stored(other, "ckpt-9") == b"checkpoint 9"
    assert "ckpt-1" not in files and "ckpt-2" not in files
    assert_consistent(other)


def test_the_job_is_not_started_when_its_started_marker_cannot_be_written(tmp_path, sigterm_handler):
    store, fs = memory_store()
    fs.faults, fs.fault_paths = {"pipe_file": FOREVER}, "/started.json"  # every other write goes through
    ran = tmp_path / "ran"
    command = [sys.executable, "-c", f"open({str(ran)!r}, 'w').write('1')"]
    config = write(tmp_path / "agent.json", agent_config(tmp_path, "vm", 1, command, "memory://x").to_json())
    assert main(str(config), store) == AGENT_ERROR_EXIT
    assert not ran.exists()
    markers = store.read_markers(1)
    assert "started" not in markers
    assert markers["exit"]["error"].startswith("StartNotRecorded: the started marker could not be written, so the "
                                               "job was not started: StorageError: write of")
    # The attempt fails with that reason (a retry tries again); it is not relaunched as lost in the same try.
    verdict = classify(InstanceFacts("i-vm", InstanceState.TERMINATED, reason="Client.InstanceInitiatedShutdown",
                                     guest_shutdown=True), Markers(markers))
    assert verdict.status is AttemptStatus.FAILED and "started marker" in verdict.reason
