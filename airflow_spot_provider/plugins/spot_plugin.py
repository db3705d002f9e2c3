"""The Airflow plugin, registered through the ``airflow.plugins`` entry point (installing the package is enough).

It mounts the JSON API at ``/spot`` and adds two React pages: a "Spot attempts" tab on every task instance and
a "Spot training" page in the navigation. The API app is built only in the api-server, the one process that
serves it (other Airflow processes load plugins too).
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import urlparse

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/spot"
#: The React apps' names: the Airflow UI shows them as the tab's and the menu entry's labels, and takes the
#: component from ``globalThis[name]``, which each bundle sets (``www/vite.config.ts`` holds the same names).
ATTEMPTS_APP, TRAINING_APP = "Spot attempts", "Spot training"


def _on_api_server() -> bool:
    return len(sys.argv) > 1 and sys.argv[1] == "api-server"


def _url(path: str) -> str:
    """``path`` under the api-server's base URL (``[api] base_url`` may put Airflow under a sub-path)."""
    from airflow.configuration import conf

    base = conf.get("api", "base_url", fallback="/") or "/"
    return (urlparse(base).path if base.startswith(("http://", "https://")) else base).rstrip("/") + path


def _react_apps() -> list[dict[str, Any]]:
    return [
        {"name": ATTEMPTS_APP, "bundle_url": _url(f"{URL_PREFIX}/static/spot-attempts.js"),
         "destination": "task_instance", "url_route": "spot"},
        {"name": TRAINING_APP, "bundle_url": _url(f"{URL_PREFIX}/static/spot-training.js"),
         "destination": "nav", "url_route": "spot-training", "category": "browse"},
    ]


def _fastapi_apps() -> list[dict[str, Any]]:
    from airflow_spot_provider.plugins.api import create_app

    return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Spot training API"}]


class SpotPlugin(AirflowPlugin):
    name = "spot_training"
    fastapi_apps = _fastapi_apps() if _on_api_server() else []
    react_apps = _react_apps() if _on_api_server() else []
