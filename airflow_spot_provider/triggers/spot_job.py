"""SpotJobTrigger: watches one attempt and yields one classified event (decisions 3 and 4).

Everything the operator needs on resume is in the event payload, because ``dag.test()`` drops the
kwargs given to ``defer()``.
"""

from __future__ import annotations

from typing import Any

from airflow_spot_provider.backends.base import InstanceFacts, classify
from airflow_spot_provider.triggers.base import SpotInstanceTrigger


class SpotJobTrigger(SpotInstanceTrigger):
    def verdict(self, facts: InstanceFacts, markers: dict[str, Any]) -> dict[str, Any] | None:
        result = classify(facts, markers)
        if not result.status.terminal:
            return None
        return {"status": result.status.value, "reason": result.reason, "exit_code": result.exit_code}
