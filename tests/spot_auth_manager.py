"""An auth manager with per-DAG access, for the UI tests: SimpleAuthManager's roles give every user every DAG.

Configured by the api-server's environment: ``SPOT_TEST_OUTSIDER`` (a user name, default ``outsider``) may not
read or change the DAGs listed, comma-separated, in ``SPOT_TEST_DENIED_DAGS``; everything else is
SimpleAuthManager's decision.
"""

from __future__ import annotations

import os
from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager


def _denied(user: Any, dag_id: str | None) -> bool:
    outsider = os.environ.get("SPOT_TEST_OUTSIDER", "outsider")
    denied = {d.strip() for d in os.environ.get("SPOT_TEST_DENIED_DAGS", "").split(",") if d.strip()}
    return user.get_name() == outsider and dag_id in denied


class DagDenyingAuthManager(SimpleAuthManager):
    def is_authorized_dag(self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None) -> bool:
        if _denied(user, details.id if details else None):
            return False
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)
