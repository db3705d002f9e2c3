"""The on-VM agent: restore, run the job, sync checkpoints, forward the interruption notice, mark exit.

The same code runs on every backend (a cloud VM or a local process). It imports no Airflow.
"""
