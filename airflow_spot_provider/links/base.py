"""Extra links on the task instance page, persisted through XCom like the amazon provider's links.

The operator works out the URL when it knows it (after a launch) and stores it under the link's key;
the UI reads it back. A link without a stored URL is simply not shown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.definitions.taskinstancekey import TaskInstanceKey


class PersistedLink(BaseOperatorLink):
    name: ClassVar[str]
    key: ClassVar[str]

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        return XCom.get_value(key=self.key, ti_key=ti_key) or ""

    @classmethod
    def persist(cls, context: Context, url: str | None) -> None:
        if url:
            context["ti"].xcom_push(key=cls.key, value=url)
