"""Links to the current attempt's VM and to the checkpoint prefix in the cloud consoles."""

from __future__ import annotations

from urllib.parse import quote

from airflow_spot_provider.links.base import PersistedLink


class SpotAttemptLink(PersistedLink):
    name = "Spot attempt (VM)"
    key = "spot_attempt_url"


class SpotCheckpointLink(PersistedLink):
    name = "Checkpoints"
    key = "spot_checkpoint_url"


def checkpoint_console_url(uri: str) -> str | None:
    """The console page of an ``s3://`` or ``gs://`` prefix (None for local directories)."""
    scheme, _, rest = uri.partition("://")
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    if scheme == "s3":
        return f"https://s3.console.aws.amazon.com/s3/buckets/{quote(bucket)}?prefix={quote(prefix)}"
    if scheme in ("gs", "gcs"):
        return f"https://console.cloud.google.com/storage/browser/{quote(bucket)}/{quote(prefix)}"
    return None
