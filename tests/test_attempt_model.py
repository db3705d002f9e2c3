"""The attempt model (``attempt.py``): statuses, markers, and how facts, events and markers update a record; and
that no other module spells a status or a marker name itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from airflow_spot_provider.attempt import (
    AttemptRecord,
    AttemptStatus,
    InstanceFacts,
    InstanceState,
    Marker,
    Markers,
    classified_event,
    exit_marker,
    started_marker,
)

PACKAGE = Path(__file__).resolve().parent.parent / "airflow_spot_provider"
#: Literals that spell a status or marker name in another vocabulary, by module: the cloud's or Airflow's words.
OTHER_VOCABULARIES = {
    ("backends/aws.py", "running"): "EC2 instance state name",
    ("backends/base.py", "backup-save"): "the role tag of a backup-save helper VM",
    ("sweep.py", "running"): "Airflow task instance / DAG run / job state",
    ("agent/notice.py", "preempted"): "the notice source's action (GCE metadata 'preempted')",
    ("ledger.py", "lost"): "the totals' count of lost VMs (a field of the summary users read)",
    ("ledger.py", "progress"): "the job summary's field holding the current attempt's progress",
    ("plugins/ledgers.py", "running"): "the jobs filter's state (JobState: running | finished)",
}


def test_statuses_know_what_they_mean():
    assert [s for s in AttemptStatus if s.active] == [AttemptStatus.LAUNCHING, AttemptStatus.RUNNING]
    assert [s for s in AttemptStatus if s.interrupted] == [AttemptStatus.PREEMPTED, AttemptStatus.LOST]
    assert AttemptStatus.FAILED.wastes_work and not AttemptStatus.SUCCEEDED.wastes_work
    assert AttemptStatus.CANCELLED.terminal and not AttemptStatus.CANCELLED.interrupted


def test_markers_read_what_the_agent_writes():
    markers = Markers({
        Marker.STARTED.value: {"time": 10.0, **started_marker("i-1", "ckpt-3")},
        Marker.EXIT.value: {"time": 20.0, **exit_marker(1, noticed=False, sync_error="S3 down")},
    })
    assert (markers.started_at, markers.restored_from) == (10.0, "ckpt-3")
    assert (markers.exited, markers.exit_code, markers.exited_at) == (True, 1, 20.0)
    assert markers.sync_error == "S3 down" and markers.agent_error is None
    assert not markers.has(Marker.FINAL_SYNC) and markers.progress is None
    assert exit_marker(None, noticed=True, error="boom") == {"code": None, "notice": True, "final_sync": False,
                                                              "error": "boom"}
    assert {m.file for m in Marker} >= {"started.json", "final-sync.json", "backup-save.json"}


def test_a_record_follows_launch_end_and_cancel():
    record = AttemptRecord(attempt=2, try_number=1, backend="local", token="t")
    assert record.status is AttemptStatus.LAUNCHING and record.active
    record.refused("InsufficientInstanceCapacity", "no room", "m5.large", "us-east-1a")
    assert record.launch_errors[0]["code"] == "InsufficientInstanceCapacity"
    record.running_on(InstanceFacts("i-1", InstanceState.RUNNING, zone="z", instance_type="t", launched_at=100.0,
                                    price_per_hour=0.5, on_demand_price_per_hour=1.0))
    assert (record.status, record.instance_id, record.zone, record.price_per_hour) == (
        AttemptStatus.RUNNING, "i-1", "z", 0.5)
    gone = InstanceFacts("i-1", InstanceState.TERMINATED, reason="Server.SpotInstanceTermination", preempted=True,
                         ended_at=160.0)
    markers = Markers({Marker.STARTED.value: {"time": 101.0, **started_marker("i-1", "ckpt-1")},
                       Marker.NOTICE.value: {"time": 150.0, "notice": {}},
                       Marker.PROGRESS.value: {"step": 40}})
    event = classified_event(2, "i-1", gone, markers)
    assert event is not None and event["status"] == AttemptStatus.PREEMPTED.value
    record.ended(event)
    assert record.status is AttemptStatus.PREEMPTED and record.reason == "Server.SpotInstanceTermination"
    assert (record.started_at, record.restored_from, record.notice_at, record.ended_at) == (101.0, "ckpt-1", 150.0,
                                                                                         160.0)
    assert record.progress == {"step": 40} and not record.final_synced and record.price_per_hour == 0.5
    assert record.lost_seconds == 60.0  # nothing published: all of it is lost
    # The ledger's JSON round trip keeps the status as its value.
    again = AttemptRecord.from_dict(record.to_dict())
    assert again == record and record.to_dict()["status"] == "preempted"
    pending = AttemptRecord(attempt=3, try_number=1, backend="local", token="u")
    pending.cancel("no capacity before job_timeout")
    assert pending.status is AttemptStatus.CANCELLED and pending.ended_at is not None


def test_a_running_vm_gives_no_event():
    assert classified_event(1, "i-1", InstanceFacts("i-1", InstanceState.RUNNING), Markers()) is None


def _literals(tree: ast.AST) -> list[ast.Constant]:
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


@pytest.mark.parametrize("module", sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                                          if p.name != "attempt.py"))
def test_no_module_spells_a_status_or_a_marker_name(module):
    names = {s.value for s in AttemptStatus} | {m.value for m in Marker}
    tree = ast.parse((PACKAGE / module).read_text())
    found = sorted({(node.lineno, node.value) for node in _literals(tree)
                    if node.value in names and (module, node.value) not in OTHER_VOCABULARIES})
    assert not found, f"{module} spells attempt statuses or marker names (use attempt.py): {found}"
