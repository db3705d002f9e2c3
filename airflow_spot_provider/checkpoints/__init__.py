"""Checkpoint store: files + manifest + per-attempt markers under one prefix (no Airflow import)."""
