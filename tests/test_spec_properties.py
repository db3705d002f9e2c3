"""Property-based tests of untrusted input: job specs, store keys on restore, command arguments.

Each property runs a modest number of generated examples (seconds in total), plus explicit examples
of the inputs that matter most (shell metacharacters, path traversal).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from airflow_spot_provider.agent.config import AgentConfig
from airflow_spot_provider.agent.runner import AttemptRunner
from airflow_spot_provider.checkpoints.store import CheckpointStore, Manifest, safe_relpath
from airflow_spot_provider.checkpoints.sync import local_target, restore
from airflow_spot_provider.spec import JobSpec, MachineSpec, SpotSpecError

FAST = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# -- specs ---------------------------------------------------------------------------------------
# Integers as JSON carries them between systems (64-bit); bigger ones have their own test below.
JSON_SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats() | st.text(max_size=12))
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
VALID_JOB = {"command": ["python", "train.py"], "checkpoint_uri": "file:///tmp/ckpt/", "backend": "local"}
JOB_FIELDS = ["command", "checkpoint_uri", "backend", "resume_args", "env", "pass_env", "checkpoint_pattern",
              "sync_interval", "poll_interval", "max_preemptions", "keep_checkpoints", "machine"]
MACHINE_FIELDS = ["instance_types", "zones", "market", "max_price_per_hour", "on_demand_after_preemptions",
                  "image", "disk_gb"]


def assert_names_field(err: SpotSpecError, field_name: str) -> None:
    message = str(err)
    assert re.match(rf"{re.escape(field_name)}(\[[^\]]*\])*(\.\w+)?(\[[^\]]*\])*: ", message), message


@FAST
@given(field_name=st.sampled_from(JOB_FIELDS), value=JSON_VALUES)
@example(field_name="command", value=[""])
@example(field_name="env", value={"SPOT_ATTEMPT": "1"})
@example(field_name="machine", value={"zones": [1]})
def test_job_spec_accepts_or_names_the_field(field_name, value):
    try:
        JobSpec(**{**VALID_JOB, field_name: value})
    except SpotSpecError as err:
        assert_names_field(err, field_name)


@FAST
@given(field_name=st.sampled_from(MACHINE_FIELDS), value=JSON_VALUES)
@example(field_name="zones", value=["us-east-1a", 7])
@example(field_name="max_price_per_hour", value=float("nan"))
def test_machine_spec_accepts_or_names_the_field(field_name, value):
    builders = (lambda: MachineSpec(**{field_name: value}), lambda: JobSpec(**VALID_JOB, machine={field_name: value}))
    for build in builders:
        try:
            build()
        except SpotSpecError as err:
            assert_names_field(err, f"machine.{field_name}")


@pytest.mark.parametrize(("build", "field_name"), [
    (lambda v: JobSpec(**VALID_JOB, sync_interval=v), "sync_interval"),
    (lambda v: JobSpec(**VALID_JOB, max_preemptions=v), "max_preemptions"),
    (lambda v: MachineSpec(disk_gb=v), "machine.disk_gb"),
])
def test_integers_beyond_float_range_are_a_spec_error(build, field_name):
    try:
        build(10**400)
    except SpotSpecError as err:
        assert_names_field(err, field_name)


# -- store keys ----------------------------------------------------------------------------------
KEY_PARTS = st.sampled_from(["..", ".", "", "a", "b.bin", "ckpt-1", "\\", "..\\..", "\x00", "é", "\u2025",
                             "／", "~", "$HOME", " ", ".spot", "ckpt-2"])
KEYS = st.lists(KEY_PARTS | st.text(max_size=6), min_size=1, max_size=5).map("/".join) | st.text(max_size=20)


def inside(path: str, root: str) -> bool:
    return os.path.commonpath([os.path.realpath(path), os.path.realpath(root)]) == os.path.realpath(root)


@FAST
@given(key=KEYS)
@example(key="../escape")
@example(key="/etc/passwd")
@example(key="a/../../b")
@example(key="a\\..\\b")
@example(key="a\x00b")
@example(key="\ud800")
@example(key="a/" + "x" * 300)
def test_a_key_is_refused_or_stays_inside_the_directory(key):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp, "ckpt")
        try:
            safe_relpath(key)
        except ValueError:
            return
        target = local_target(root, key)
        assert inside(str(target), str(root)) and os.path.normpath(target) == str(target)
        assert "\x00" not in key and not key.startswith("/") and ".." not in key.split("/")


@settings(max_examples=25, deadline=None, database=None)
@given(keys=st.lists(KEYS, min_size=1, max_size=4, unique=True))
@example(keys=["ckpt-1/w", "link/../../escape", "../outside", "link/x"])
def test_restore_never_writes_outside_its_directory(keys):
    """A manifest listing arbitrary keys (a tampered store): whatever restore does, it stays inside."""
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = Path(tmp)
        store_root, dst, outside = sandbox / "store", sandbox / "dst", sandbox / "outside"
        for path in (store_root, dst, outside):
            path.mkdir()
        (dst / "link").symlink_to(outside, target_is_directory=True)  # planted on the local disk
        store = CheckpointStore.from_uri(f"file://{store_root}")
        files = {}
        for key in keys:
            content = f"content of {key!r}".encode("utf-8", "surrogatepass")
            files[key] = {"size": len(content), "sha256": hashlib.sha256(content).hexdigest(), "attempt": 1}
            try:
                target = Path(store.path(safe_relpath(key)))
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            except (ValueError, OSError):
                pass  # an unsafe key (or one clashing with another) has no object: restore must cope
        store.write_manifest(Manifest(files=files))
        before = sorted(p for p in sandbox.rglob("*") if not p.is_relative_to(dst) and not p.is_relative_to(store_root))
        try:
            result = restore(store, dst, r"ckpt-(?P<step>\d+)")
        except RuntimeError as err:
            assert "is intact" in str(err)  # every checkpoint refused: a refusal, not an escape
            result = None
        after = sorted(p for p in sandbox.rglob("*") if not p.is_relative_to(dst) and not p.is_relative_to(store_root))
        assert after == before and list(outside.iterdir()) == []
        for path in dst.rglob("*"):
            assert inside(str(path), str(dst)) or path == dst / "link"
        if result is not None:
            for key in result.files:
                safe_relpath(key)
                assert (dst / key).read_bytes() == f"content of {key!r}".encode()


# -- command arguments ---------------------------------------------------------------------------
WRITE_ARGV = "import os, sys; open('argv.bin', 'wb').write(b'\\0'.join(os.fsencode(a) for a in sys.argv[1:]))"
ARGS = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=16)


@pytest.fixture(scope="module")
def argv_sandbox():
    old = signal.getsignal(signal.SIGTERM)  # AttemptRunner.run() installs its own handler
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)
    signal.signal(signal.SIGTERM, old)


@settings(max_examples=12, deadline=None, database=None)
@given(arg=ARGS)
@example(arg="; rm -rf / #")
@example(arg="$(id)")
@example(arg="`whoami`")
@example(arg="a b")
@example(arg="*")
@example(arg="'\"\\ | & > /dev/null \n {resume_from} %s ~")
def test_shell_metacharacters_reach_the_job_literally(argv_sandbox, arg):
    work = Path(tempfile.mkdtemp(dir=argv_sandbox))
    config = AgentConfig(
        attempt=1, instance_id="i-argv", command=[sys.executable, "-c", WRITE_ARGV, arg, "second"],
        checkpoint_uri=f"file://{work}/store", work_dir=str(work / "vm"), checkpoint_pattern=r"(?P<step>\d+)",
        sync_interval=60.0,
    )
    config = AgentConfig.from_json(config.to_json())  # what the backend writes and the VM reads
    assert AttemptRunner(config).run() == 0
    assert (work / "vm" / "argv.bin").read_bytes() == arg.encode() + b"\0second"
