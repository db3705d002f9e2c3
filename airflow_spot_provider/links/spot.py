"""Links to the current attempt's VM and to the checkpoint prefix in the cloud consoles (the URLs come from
the backend: ``console_url`` and ``storage_console_url``)."""

from __future__ import annotations

from airflow_spot_provider.links.base import PersistedLink


class SpotAttemptLink(PersistedLink):
    name = "Spot attempt (VM)"
    key = "spot_attempt_url"


class SpotCheckpointLink(PersistedLink):
    name = "Checkpoints"
    key = "spot_checkpoint_url"
