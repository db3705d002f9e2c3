"""Airflow provider that runs ML training on spot / preemptible VMs as a resumable task.

Importing this package does not import Airflow: the on-VM agent and the helpers for
training scripts (``resumable``) run where Airflow is not installed.
"""

__version__ = "0.1.0"
