"""The committed UI bundles register their components where the Airflow UI looks them up.

The UI takes a react app's component from ``globalThis[<app name>]``, and only when that is unset from
``globalThis.AirflowPlugin``, a slot every plugin shares (cleared before each load, read when it ends): a bundle
writing it could hand its component to another plugin loading at the same time, so the bundles must not.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from airflow_spot_provider.plugins import spot_plugin
from airflow_spot_provider.plugins.api import DIST


@pytest.mark.parametrize("app", spot_plugin._react_apps(), ids=lambda app: app["name"])
def test_bundle_sets_the_global_named_like_its_react_app(app):
    bundle = (DIST / PurePosixPath(app["bundle_url"]).name).read_text()
    assert f'["{app["name"]}"]=' in bundle, f"{app['bundle_url']} does not set globalThis[{app['name']!r}]"
    assert "AirflowPlugin" not in bundle
