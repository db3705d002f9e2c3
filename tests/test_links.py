"""The task's extra links through dag.test() on the local backend, read back as the API server reads them."""

from __future__ import annotations

import sys

import pytest

from .e2e import run_job

pytestmark = pytest.mark.usefixtures("airflow_db")


def test_a_task_without_link_urls_logs_no_xcom_errors_and_shows_no_link(tmp_path, state_dir, capfd):
    from airflow.models.serialized_dag import SerializedDagModel

    # Local backend, file:// checkpoints: neither link has a URL. Two runs (launch and defer, then finish).
    result = run_job("e2e_links_without_urls", tmp_path, [sys.executable, "-c", "pass"],
                     backend_options={"state_dir": str(state_dir)})
    assert result["state"] == "success"
    logs = "".join(capfd.readouterr())
    assert "XCom not found" not in logs and "operator extra link" not in logs
    # The API server's view: the serialized task's links read the value the run stored, an empty one.
    ti = result["run"].get_task_instance("train")
    task = SerializedDagModel.get_dag(ti.dag_id).get_task("train")
    assert sorted(task.extra_links) == ["Checkpoints", "Spot attempt (VM)"]
    assert {name: task.get_extra_links(ti, name) for name in task.extra_links} == {
        "Checkpoints": "", "Spot attempt (VM)": ""}
