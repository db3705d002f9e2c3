import pytest

from airflow_spot_provider.attempt import AttemptStatus, InstanceFacts, InstanceState, Markers, classify

RUNNING = InstanceFacts("i-1", InstanceState.RUNNING)
GONE = InstanceFacts("i-1", InstanceState.TERMINATED, reason="Client.InstanceInitiatedShutdown", guest_shutdown=True)
RECLAIMED = InstanceFacts("i-1", InstanceState.TERMINATED, reason="Server.SpotInstanceTermination", preempted=True)
VANISHED = InstanceFacts("i-1", InstanceState.MISSING, reason="Local.HostLost")
NOTICE = {"notice": {"time": 1}}


@pytest.mark.parametrize(
    ("facts", "markers", "status"),
    [
        (RUNNING, {}, AttemptStatus.RUNNING),
        (RUNNING, NOTICE, AttemptStatus.RUNNING),  # notice, VM still alive: wait for the end
        (RUNNING, {"exit": {"code": 0}}, AttemptStatus.SUCCEEDED),
        (RECLAIMED, {"exit": {"code": 0}}, AttemptStatus.SUCCEEDED),  # a clean exit wins over a later reclaim
        (RUNNING, {"exit": {"code": 2}}, AttemptStatus.FAILED),
        (GONE, {"exit": {"code": 2}}, AttemptStatus.FAILED),
        (RUNNING, {**NOTICE, "exit": {"code": 143}}, AttemptStatus.PREEMPTED),
        (GONE, NOTICE, AttemptStatus.PREEMPTED),
        (RECLAIMED, {}, AttemptStatus.PREEMPTED),  # no notice at all: the cloud's reason says so
        (GONE, {"started": {"time": 1}}, AttemptStatus.LOST),  # gone for no known reason: never guessed a preemption
        (GONE, {}, AttemptStatus.FAILED),  # powered itself off before the agent started: a broken boot, not "lost"
        (VANISHED, {}, AttemptStatus.LOST),
        (RUNNING, {"exit": {"code": None, "error": "OSError: store down"}}, AttemptStatus.FAILED),
    ],
)
def test_classification_comes_from_facts(facts, markers, status):
    assert classify(facts, Markers(markers)).status is status
