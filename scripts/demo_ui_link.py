"""Print where the demo run's "Spot attempts" tab is in the Airflow UI (and how to start one if none answers)."""

from __future__ import annotations

import urllib.request
from urllib.parse import quote

from airflow.configuration import conf
from airflow.models.dagrun import DagRun
from airflow.utils.session import create_session
from sqlalchemy import select

DAG_ID, TASK_ID = "spot_weekly_retraining", "train"


def main() -> None:
    with create_session() as session:
        run_id = session.scalar(select(DagRun.run_id).where(DagRun.dag_id == DAG_ID)
                                .order_by(DagRun.id.desc()).limit(1))
    if run_id is None:
        return
    base = (conf.get("api", "base_url", fallback="") or "http://localhost:8080").rstrip("/")
    tab = f"{base}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/{TASK_ID}/plugin/spot"
    try:
        with urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=2):
            up = True
    except OSError:
        up = False
    if up:
        print(f"In the Airflow UI (Spot attempts tab): {tab}")
    else:
        print(f"To see this run in the Airflow UI, start `airflow standalone` on this AIRFLOW_HOME (docs/ui.md), "
              f"then open {tab}")


if __name__ == "__main__":
    main()
