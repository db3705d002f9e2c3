import json

import pytest

from airflow_spot_provider.checkpoints.latest import latest_name
from airflow_spot_provider.checkpoints.store import CheckpointStore
from airflow_spot_provider.checkpoints.sync import DirectorySync, restore


def store_at(path) -> CheckpointStore:
    return CheckpointStore.from_uri(f"file://{path}")


def test_latest_compares_numbers_not_strings():
    assert latest_name(["epoch-99.pt", "epoch-100.pt", "epoch-9.pt"]) == "epoch-100.pt"
    assert latest_name(["step_0999", "step_1000", "notes.txt"], r"step_(?P<step>\d+)") == "step_1000"
    assert latest_name(["vocab.json"]) is None


def test_sync_is_incremental_and_skips_temporary_files(tmp_path):
    local, store = tmp_path / "local", store_at(tmp_path / "store")
    local.mkdir()
    (local / "ckpt-1.bin").write_bytes(b"a" * 100)
    (local / ".ckpt-2.bin.x.tmp").write_bytes(b"partial")
    (local / "half.tmp").write_bytes(b"partial")
    sync = DirectorySync(local, store, attempt=1, pattern=r"ckpt-(?P<step>\d+)")
    first = sync.sync()
    assert first.uploaded == ["ckpt-1.bin"] and first.latest == "ckpt-1.bin"
    assert sync.sync().uploaded == []  # nothing changed: nothing sent
    (local / "ckpt-2.bin").write_bytes(b"b" * 10)
    (local / "ckpt-1.bin").write_bytes(b"c" * 100)  # same size, new content
    assert sorted(sync.sync().uploaded) == ["ckpt-1.bin", "ckpt-2.bin"]
    manifest = store.read_manifest()
    assert set(manifest.files) == {"ckpt-1.bin", "ckpt-2.bin"}
    assert manifest.files["ckpt-2.bin"]["attempt"] == 1
    # A second syncer (the next attempt) starts from the published manifest, not from scratch.
    assert DirectorySync(local, store, attempt=2, pattern=r"ckpt-(?P<step>\d+)").sync().uploaded == []


def test_restore_takes_the_newest_checkpoint_and_the_files_that_are_not_checkpoints(tmp_path):
    src, store = tmp_path / "src", store_at(tmp_path / "store")
    (src / "step_1000").mkdir(parents=True)
    (src / "step_1000" / "shard0").write_text("new0")
    (src / "step_1000" / "shard1").write_text("new1")
    (src / "step_999").mkdir()
    (src / "step_999" / "shard0").write_text("old")
    (src / "vocab.json").write_text("{}")
    DirectorySync(src, store, 1, r"step_(?P<step>\d+)").sync()
    result = restore(store, tmp_path / "dst", r"step_(?P<step>\d+)")
    assert result.resume_from == "step_1000"
    assert sorted(result.files) == ["step_1000/shard0", "step_1000/shard1", "vocab.json"]
    assert not (tmp_path / "dst" / "step_999").exists()


def test_restore_falls_back_when_the_newest_checkpoint_is_corrupt(tmp_path):
    src, store = tmp_path / "src", store_at(tmp_path / "store")
    src.mkdir()
    (src / "ckpt-1").write_text("one")
    (src / "ckpt-2").write_text("two")
    DirectorySync(src, store, 1, r"ckpt-(?P<step>\d+)").sync()
    (tmp_path / "store" / "ckpt-2").write_text("bitrot")
    result = restore(store, tmp_path / "dst", r"ckpt-(?P<step>\d+)")
    assert result.resume_from == "ckpt-1" and "ckpt-2" in result.rejected
    assert not (tmp_path / "dst" / "ckpt-2").exists()


@pytest.mark.parametrize("evil", ["../escape", "/abs/path", "a/../../b", "a//b"])
def test_restore_refuses_keys_that_escape_the_directory(tmp_path, evil):
    store = store_at(tmp_path / "store")
    (tmp_path / "store" / ".spot").mkdir(parents=True)
    (tmp_path / "store" / ".spot" / "manifest.json").write_text(
        json.dumps({"files": {evil: {"size": 1, "sha256": "0" * 64}}}))
    result = restore(store, tmp_path / "dst", r"(?P<step>\d+)")
    assert result.rejected == [evil] and result.files == []
    assert not (tmp_path / "escape").exists()


def test_markers_round_trip(tmp_path):
    store = store_at(tmp_path / "store")
    store.write_marker(3, "notice", {"notice": {"action": "terminate"}})
    store.write_marker(3, "exit", {"code": 143})
    markers = store.read_markers(3)
    assert set(markers) == {"notice", "exit"} and markers["exit"]["code"] == 143
    assert store.read_markers(4) == {}
    with pytest.raises(ValueError):
        store.write_marker(3, "bogus")


def test_restore_refuses_a_silent_fresh_start_when_no_checkpoint_is_intact(tmp_path):
    src, store = tmp_path / "src", store_at(tmp_path / "store")
    src.mkdir()
    (src / "ckpt-1").write_text("one")
    DirectorySync(src, store, 1, r"ckpt-(?P<step>\d+)").sync()
    (tmp_path / "store" / "ckpt-1").write_text("bitrot")
    with pytest.raises(RuntimeError, match="none of the 1 checkpoint"):
        restore(store, tmp_path / "dst", r"ckpt-(?P<step>\d+)")


def test_a_failed_manifest_write_is_published_on_the_next_round(tmp_path, monkeypatch):
    local, store = tmp_path / "local", store_at(tmp_path / "store")
    local.mkdir()
    (local / "ckpt-1").write_text("one")
    sync = DirectorySync(local, store, 1, r"ckpt-(?P<step>\d+)")
    real_write = store.write_manifest

    def broken(manifest):
        raise OSError("store unavailable")

    monkeypatch.setattr(store, "write_manifest", broken)
    with pytest.raises(OSError):
        sync.sync()
    monkeypatch.setattr(store, "write_manifest", real_write)
    assert sync.sync().uploaded == ["ckpt-1"]
    assert set(store.read_manifest().files) == {"ckpt-1"}
