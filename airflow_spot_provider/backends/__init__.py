"""Backends by name. Cloud backends are imported only when asked for (their extras may be missing)."""

from __future__ import annotations

from typing import Any

from airflow_spot_provider.backends.base import SpotBackend

EXTRAS = {"aws": "aws", "gcp": "gcp"}


def get_backend(name: str, options: dict[str, Any] | None = None, conn_id: str | None = None) -> SpotBackend:
    """The backend ``name`` with its options; ``conn_id`` is the Airflow connection of the cloud API
    and of the checkpoint store."""
    options = dict(options or {})
    if name == "local":
        from airflow_spot_provider.backends.local import LocalBackend

        return LocalBackend(conn_id=conn_id, **options)
    try:
        if name == "aws":
            from airflow_spot_provider.backends.aws import AwsBackend

            return AwsBackend(conn_id=conn_id, **options)
        if name == "gcp":
            from airflow_spot_provider.backends.gcp import GcpBackend

            return GcpBackend(conn_id=conn_id, **options)
    except ImportError as err:
        raise NotImplementedError(
            f"the {name!r} backend needs the {EXTRAS[name]!r} extra: pip install 'airflow-spot-provider[{name}]' "
            f"({err})"
        ) from err
    raise ValueError(f"unknown backend {name!r}; choose one of local, aws, gcp")
