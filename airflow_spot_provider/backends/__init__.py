"""Backends by name. Cloud backends are imported only when asked for (their extras may be missing)."""

from __future__ import annotations

from typing import Any

from airflow_spot_provider.backends.base import SpotBackend


def get_backend(name: str, options: dict[str, Any] | None = None) -> SpotBackend:
    options = dict(options or {})
    if name == "local":
        from airflow_spot_provider.backends.local import LocalBackend

        return LocalBackend(**options)
    if name in ("aws", "gcp"):
        raise NotImplementedError(
            f"the {name!r} backend is not available in this version of airflow-spot-provider; "
            "use backend='local'"
        )
    raise ValueError(f"unknown backend {name!r}; choose one of local, aws, gcp")
