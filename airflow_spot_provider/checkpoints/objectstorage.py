"""The Airflow side of the checkpoint store: the filesystem comes from ``ObjectStoragePath``,
so the store uses the Airflow connection (``conn_id``) the same way Airflow's own object storage does."""

from __future__ import annotations

from airflow_spot_provider.checkpoints.store import CheckpointStore


def store_for(uri: str, conn_id: str | None = None) -> CheckpointStore:
    from airflow.sdk import ObjectStoragePath

    path = ObjectStoragePath(uri, conn_id=conn_id)
    return CheckpointStore(path.fs, path.path)
