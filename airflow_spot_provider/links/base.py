"""Extra links on the task instance page, stored in XCom under the link's key.

The operator works out each URL while it runs and leaves it on itself (:meth:`PersistedLink.show`).
When a run ends (a deferral, success or failure), the Task SDK calls :meth:`~PersistedLink.get_link`
in the worker and stores what it returns in XCom under :attr:`~PersistedLink.xcom_key`; the API
server reads it from there. ``get_link`` reads no XCom: a key that was never pushed is logged as an
error ("XCom not found") by the Task SDK, on every run of a task that has no URL (the local backend).
An empty URL is stored as ``""``: the link is not shown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk.definitions.taskinstancekey import TaskInstanceKey

#: The operator attribute that holds this run's URLs, by link key.
URLS_ATTRIBUTE = "_spot_link_urls"


class PersistedLink(BaseOperatorLink):
    name: ClassVar[str]
    key: ClassVar[str]

    @property
    def xcom_key(self) -> str:
        return self.key

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        # Never raises: any other operator, or a run that ended before it set a URL, gets no link.
        urls = getattr(operator, URLS_ATTRIBUTE, None)
        return str(urls.get(self.key) or "") if isinstance(urls, dict) else ""

    @classmethod
    def show(cls, operator: Any, url: str | None) -> None:
        """The URL this link shows once the operator's current run ends (None: no link)."""
        urls = getattr(operator, URLS_ATTRIBUTE, None)
        setattr(operator, URLS_ATTRIBUTE, {**(urls if isinstance(urls, dict) else {}), cls.key: url or ""})
