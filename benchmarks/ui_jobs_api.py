"""The "Spot training" page's job list over N spot task instances: the plugin's one request vs Airflow's REST API.

Starts an api-server and a dag-processor (``tests/cluster.py``) on a fresh PostgreSQL database, waits for the
cluster DAGs to be parsed, and inserts N task instances with a full ledger each (``dag_run``, ``task_instance``
and ``task_state_store`` rows: ``spot.job``, ``spot.attempt.0001``-``0003``, ``spot.summary``; one job in 50
still running), spread over those DAGs and a week. Then it times:

- ours: ``GET /spot/api/jobs?limit=50`` (the page's first screen: running first, then newest), R calls: p50/p95;
- baseline: the public per-task ``GET /api/v2/dags/{dag}/dagRuns/{run}/taskInstances/train/state-store``, once per
  task for a sample of S tasks, extrapolated to the N tasks a job list needs to read without the plugin.

Also ``GET /spot/api/stats`` (every attempt record of the last 30 days) and ``/jobs?state=running``.
Usage: python benchmarks/ui_jobs_api.py [N] [R] [S]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import httpx
import psycopg2
from psycopg2.extras import execute_values

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airflow_spot_provider.attempt import AttemptRecord, AttemptStatus  # noqa: E402
from airflow_spot_provider.ledger import ATTEMPT_KEY, JOB_KEY, SUMMARY_KEY, JobRecord, job_summary  # noqa: E402
from tests.cluster import PG, AirflowCluster, wait_for  # noqa: E402 - the real Airflow lives with the tests

ATTEMPTS = 3
RUNNING_EVERY = 50  # one job in 50 is still running
BATCH = 2000


def ledger(index: int, now: float) -> tuple[bool, float, dict[str, dict]]:
    """One job's ledger rows (key → value): two preemptions, then the last attempt succeeded or still runs."""
    running = index % RUNNING_EVERY == 0
    start = now - index * 60.0  # one job a minute: N=10,000 spans a week
    attempts = []
    for number in range(1, ATTEMPTS + 1):
        last = number == ATTEMPTS
        status = (AttemptStatus.RUNNING if running else AttemptStatus.SUCCEEDED) if last else AttemptStatus.PREEMPTED
        launched = start + (number - 1) * 1200
        record = AttemptRecord(
            attempt=number, try_number=1, backend="aws", token=f"{index:08x}{number:04x}", status=status,
            reason={AttemptStatus.PREEMPTED: "Server.SpotInstanceTermination",
                    AttemptStatus.SUCCEEDED: "exit code 0"}.get(status, ""),
            exit_code=0 if status is AttemptStatus.SUCCEEDED else None, instance_id=f"i-{index:08x}{number:04x}",
            zone=f"us-east-1{'abc'[index % 3]}", instance_type=("g5.xlarge", "g6.xlarge")[index % 2],
            launched_at=launched, started_at=launched + 40, ended_at=None if status.active else launched + 1100,
            notice_at=launched + 1000 if status is AttemptStatus.PREEMPTED else None,
            restored_from=f"ckpt-{(number - 1) * 1000:08d}.npz" if number > 1 else None,
            last_checkpoint=f"ckpt-{number * 1000:08d}.npz", last_checkpoint_at=launched + 990,
            price_per_hour=0.42, on_demand_price_per_hour=1.006, progress={"step": number * 1000, "epoch": number},
            backup_save={"skipped": True, "reason": "the agent synced after the job exited", "uploaded": [],
                         "bytes": 0, "latest": None, "helper_id": None, "error": None} if number > 1 else None,
            revision=3)
        attempts.append(record)
    job = JobRecord(attempts=ATTEMPTS, numbers=list(range(1, ATTEMPTS + 1)), revision=ATTEMPTS + 1,
                    checkpoint_uri=f"s3://bench/{index}/")
    rows = {JOB_KEY: asdict(job), **{ATTEMPT_KEY.format(a.attempt): a.to_dict() for a in attempts},
            SUMMARY_KEY: job_summary(attempts[-1], attempts)}
    return running, start + (ATTEMPTS - 1) * 1200 + 60, rows


def batches(n: int, size: int) -> Iterator[range]:
    for first in range(0, n, size):
        yield range(first, min(n, first + size))


def insert(cluster: AirflowCluster, dag_ids: list[str], n: int) -> list[tuple[str, str]]:
    """N task instances with their ledgers; returns their (dag_id, run_id)."""
    now = time.time()
    keys = []
    conn = psycopg2.connect(dbname=cluster.db_name, **PG)
    try:
        with conn, conn.cursor() as cur:
            for chunk in batches(n, BATCH):
                jobs = {i: ledger(i, now) for i in chunk}
                runs = [(dag_ids[i % len(dag_ids)], f"bench-{i:06d}", jobs[i]) for i in chunk]
                ids = execute_values(cur, (
                    "INSERT INTO dag_run (dag_id, run_id, run_type, run_after, state, start_date, queued_at) "
                    "VALUES %s RETURNING id"), [
                    (dag, run, "manual", job[1], "running" if job[0] else "success", job[1], job[1])
                    for dag, run, job in runs],
                    template="(%s, %s, %s, to_timestamp(%s), %s, to_timestamp(%s), to_timestamp(%s))", fetch=True)
                execute_values(cur, (
                    "INSERT INTO task_instance (id, task_id, dag_id, run_id, map_index, try_number, max_tries, pool, "
                    "pool_slots, state, operator) VALUES %s"), [
                    (dag, run, "deferred" if job[0] else "success") for dag, run, job in runs],
                    template="(gen_random_uuid(), 'train', %s, %s, -1, 1, 0, 'default_pool', 1, %s, "
                             "'SpotTrainingOperator')")
                execute_values(cur, (
                    "INSERT INTO task_state_store (dag_run_id, task_id, map_index, key, dag_id, run_id, value, "
                    "updated_at) VALUES %s"), [
                    (run_pk, key, dag, run, json.dumps(value), job[1])
                    for (run_pk,), (dag, run, job) in zip(ids, runs, strict=True) for key, value in job[2].items()],
                    template="(%s, 'train', -1, %s, %s, %s, %s, to_timestamp(%s))", page_size=5000)
                keys += [(dag, run) for dag, run, _ in runs]
        with conn.cursor() as cur:
            conn.autocommit = True
            cur.execute("ANALYZE dag_run; ANALYZE task_instance; ANALYZE task_state_store")
    finally:
        conn.close()
    return keys


def timed(call: Callable[[], httpx.Response], repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        call().raise_for_status()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call().raise_for_status()
        seconds.append(time.perf_counter() - started)
    return seconds


def p50_p95(seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main(n: int = 10_000, repeats: int = 20, sample: int = 200) -> None:
    cluster = AirflowCluster(Path(tempfile.mkdtemp(prefix="bench-ui-")))
    try:
        cluster.create_database()
        cluster.run_airflow(["db", "migrate"], timeout=600)
        cluster.start_api_server()
        cluster.start_dag_processor()
        cluster.wait_for_dag("spot_cluster_ui_preempted", timeout=300)
        dag_ids = wait_for(lambda: [d["dag_id"] for d in cluster.api("GET", "/api/v2/dags", params={
            "limit": 100, "tags": "spot"}).json()["dags"]], 120, what="the parsed DAGs")
        started = time.monotonic()
        keys = insert(cluster, dag_ids, n)
        print(f"inserted {n} spot task instances ({n * (ATTEMPTS + 2)} ledger rows) over {len(dag_ids)} DAGs "
              f"in {time.monotonic() - started:.1f}s")

        client = cluster.http
        jobs = client.get("/spot/api/jobs", params={"limit": 50}).json()
        assert jobs["total"] == n and len(jobs["jobs"]) == 50, jobs["total"]
        assert all(j["status"] == "running" for j in jobs["jobs"][:n // RUNNING_EVERY][:50])
        ours = {
            "GET /spot/api/jobs?limit=50": timed(lambda: client.get("/spot/api/jobs", params={"limit": 50}), repeats),
            "GET /spot/api/jobs?state=running&limit=50": timed(
                lambda: client.get("/spot/api/jobs", params={"state": "running", "limit": 50}), repeats),
            "GET /spot/api/stats (30 days)": timed(lambda: client.get("/spot/api/stats"), repeats),
        }
        step = max(1, len(keys) // sample)
        chosen = keys[::step][:sample]
        started = time.perf_counter()
        for dag, run in chosen:
            body = client.get(f"/api/v2/dags/{dag}/dagRuns/{run}/taskInstances/train/state-store").json()
            assert len(body["task_state_store"]) == ATTEMPTS + 2, body
        per_task = (time.perf_counter() - started) / len(chosen)

        print(f"\n{n} spot task instances, {repeats} calls each (after 3 warm-up calls):")
        for name, seconds in ours.items():
            p50, p95 = p50_p95(seconds)
            print(f"  {name}: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")
        p50 = p50_p95(ours["GET /spot/api/jobs?limit=50"])[0]
        print(f"  baseline, per-task state-store GET: {per_task * 1000:.1f} ms per task ({len(chosen)} sampled) "
              f"-> {per_task * n:.1f} s for {n} tasks")
        print(f"  ratio: the job list costs x{per_task * n / p50:.0f} less with /spot/api/jobs (p50)")
    finally:
        cluster.close()


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:]))
