"""SpotJobTrigger: watches one attempt and yields one classified event (``attempt.classified_event``).

Everything the operator needs on resume is in the event payload, because ``dag.test()`` drops the
kwargs given to ``defer()``.
"""

from __future__ import annotations

from typing import Any

from airflow_spot_provider.attempt import InstanceFacts, Markers, classified_event
from airflow_spot_provider.triggers.base import SpotInstanceTrigger


class SpotJobTrigger(SpotInstanceTrigger):
    def verdict(self, facts: InstanceFacts, markers: Markers) -> dict[str, Any] | None:
        return classified_event(self.watch.attempt, self.watch.instance_id, facts, markers)
