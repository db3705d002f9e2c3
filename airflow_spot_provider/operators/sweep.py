"""SpotSweepOperator: the ``airflow-spot sweep`` command as a maintenance task (e.g. in an hourly DAG).

Inside a task Airflow is up by definition, and the database is reached through the Task SDK: a
resource is a leftover when its task instance is not in a live state any more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_spot_provider.backends import get_backend
from airflow_spot_provider.backends.base import JobIdentity
from airflow_spot_provider.spec import BACKENDS, SpotSpecError
from airflow_spot_provider.sweep import LIVE_STATES, sweep

if TYPE_CHECKING:
    from airflow.sdk import Context


def task_sdk_liveness(key: JobIdentity) -> tuple[bool, str]:
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    states = RuntimeTaskInstance.get_task_states(dag_id=key.dag_id, task_ids=[key.task_id], run_ids=[key.run_id],
                                                 map_index=key.map_index)
    tasks = states.get(key.run_id) or {}
    if key.task_id not in tasks:
        return False, "its task is gone"
    state = tasks[key.task_id]
    # No state: cleared, it runs again and reconnects (as the CLI's sweep decides too).
    if state is None or state in LIVE_STATES:
        return True, ""
    return False, f"its task is {state}"


class SpotSweepOperator(BaseOperator):
    """List (``delete=False``) or remove the VMs, disks and helpers of jobs that are no longer live.

    :param backend: ``local``, ``aws`` or ``gcp``.
    :param backend_options: as for ``SpotTrainingOperator`` (e.g. ``region_name``).
    :param conn_id: the cloud API connection.
    :param delete: remove what is found (default: only report it).
    """

    def __init__(self, *, backend: str = "local", backend_options: dict[str, Any] | None = None,
                 conn_id: str | None = None, delete: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if backend not in BACKENDS:
            raise SpotSpecError(f"backend: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.backend_options = dict(backend_options or {})
        self.conn_id = conn_id
        self.delete = delete
        try:
            get_backend(backend, self.backend_options, conn_id=conn_id)
        except (ValueError, NotImplementedError) as err:
            raise SpotSpecError(str(err)) from err

    def execute(self, context: Context) -> dict[str, Any]:
        lines: list[str] = []

        def say(line: str) -> None:
            lines.append(line)
            self.log.info("%s", line)

        found = sweep(get_backend(self.backend, self.backend_options, conn_id=self.conn_id), task_sdk_liveness,
                      self.delete, say)
        self.log.info("%d leftover(s) %s", found, "removed" if self.delete else "found (dry run)")
        return {"found": found, "deleted": found if self.delete else 0, "lines": lines}
