"""Provider metadata read by Airflow's provider manager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from airflow_spot_provider import __version__

INTEGRATION = "Spot Training"


def get_provider_info() -> dict:
    return {
        "package-name": "airflow-spot-provider",
        "name": "Spot Training",
        "description": "Run ML training on spot / preemptible VMs (AWS EC2, GCP Compute Engine, or a local "
        "simulated spot market) as one resumable Airflow task: preemptions are saved from, resumed "
        "and accounted for without using the task's retries.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://github.com/airflow-spot-provider/airflow-spot-provider",
                "tags": ["ml", "compute"],
            }
        ],
        "operators": [
            {"integration-name": INTEGRATION, "python-modules": [
                "airflow_spot_provider.operators.spot_training", "airflow_spot_provider.operators.sweep"]}
        ],
        "triggers": [
            {"integration-name": INTEGRATION, "python-modules": [
                "airflow_spot_provider.triggers.spot_job", "airflow_spot_provider.triggers.backup_save"]}
        ],
        "extra-links": [
            "airflow_spot_provider.links.spot.SpotAttemptLink",
            "airflow_spot_provider.links.spot.SpotCheckpointLink",
        ],
    }
