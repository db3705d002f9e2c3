"""The UI plugin against real Airflow 3.3 processes (scheduler, dag-processor, triggerer, api-server on PostgreSQL).

One job is preempted twice (with a notice, then without one: backup-save) and finishes; another runs until the
module ends. The plugin's JSON API (``/spot/api/...``) must show exactly what the ledgers hold, authorise like
Airflow's REST API (per DAG: ``spot_auth_manager`` denies one user one DAG) and refuse bad parameters by name.
Then a browser (Playwright driving Chromium) opens the "Spot attempts" tab and the "Spot training" page, checks
what they show and takes screenshots (``SPOT_UI_SCREENSHOTS=DIR`` keeps them there; ``docs/images`` holds the
ones ``docs/ui.md`` shows, taken with ``SPOT_UI_SCREENSHOTS=docs/images``).
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from airflow_spot_provider.attempt import AttemptRecord
from airflow_spot_provider.checkpoints.latest import checkpoint_step, compile_pattern
from airflow_spot_provider.ledger import totals

from .cluster import REPO, AirflowCluster, Timings, logs_after_failure, print_timings, running, wait_for
from .e2e import CKPT_PATTERN

pytestmark = [pytest.mark.airflow, pytest.mark.timeout(900)]

PREEMPTED, RUNNING = "spot_cluster_ui_preempted", "spot_cluster_ui_running"
ADMIN, OUTSIDER = ("admin", "admin-secret"), ("outsider", "outsider-secret")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
#: Where screenshots go: a test run never changes the committed ones unless asked to.
IMAGES = Path(os.environ.get("SPOT_UI_SCREENSHOTS") or tempfile.mkdtemp(prefix="spot-ui-screenshots-"))
TIMINGS = Timings()


@dataclass(frozen=True)
class Runs:
    preempted: str
    running: str


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request) -> Iterator[AirflowCluster]:
    root = tmp_path_factory.mktemp("ui-cluster")
    passwords = root / "passwords.json"
    passwords.write_text(json.dumps(dict([ADMIN, OUTSIDER])))
    airflow = AirflowCluster(root, login=ADMIN, extra_env={
        "PYTHONPATH": str(REPO),  # the api-server imports the tests' auth manager
        "AIRFLOW__CORE__AUTH_MANAGER": "tests.spot_auth_manager.DagDenyingAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN[0]}:admin,{OUTSIDER[0]}:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "SPOT_TEST_OUTSIDER": OUTSIDER[0],
        "SPOT_TEST_DENIED_DAGS": PREEMPTED,
    })
    with running(airflow, TIMINGS):
        yield airflow
    print_timings(request, "UI test timings", TIMINGS)


@pytest.fixture(autouse=True)
def logs_on_failure(cluster: AirflowCluster, request, capsys) -> Iterator[None]:
    yield from logs_after_failure(cluster, request, capsys)


def summary_status(cluster: AirflowCluster, dag_id: str, run_id: str) -> str | None:
    return (cluster.state_store(dag_id, run_id).get("spot.summary") or {}).get("status")


def steps(directory: Path) -> set[int]:
    pattern = compile_pattern(CKPT_PATTERN)
    names = [p.name for p in directory.iterdir()] if directory.is_dir() else []
    return {step for name in names if (step := checkpoint_step(name, pattern)) is not None}


def preempt(cluster: AirflowCluster, run_id: str, number: int, notice: bool) -> None:
    """Preempt attempt ``number`` of the job like the spot market (``airflow-spot preempt``), once Airflow has seen
    the worker that launched it defer (an attempt that ends before hits an Airflow race: see
    ``wait_deferral_reported``) and its disk holds a checkpoint the store has not got yet."""
    def running() -> dict[str, Any] | None:
        _, attempts = cluster.ledger(PREEMPTED, run_id)
        return next((a for a in attempts if a["attempt"] == number and a["status"] == "running"), None)

    attempt = wait_for(running, 300, what=f"attempt {number} to run")
    cluster.wait_deferral_reported(PREEMPTED, run_id, count=number)
    disk = cluster.state_dir / "instances" / attempt["instance_id"] / "disk" / "checkpoints"
    store = cluster.root / "checkpoints" / PREEMPTED / run_id.replace(":", "_")
    wait_for(lambda: max(steps(disk), default=-1) > max(steps(store), default=-1), 120,
             what=f"a new checkpoint on attempt {number}'s disk")
    done = cluster.run_cli(["preempt", f"{PREEMPTED}/{run_id}/train", *([] if notice else ["--no-notice"])])
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def runs(cluster: AirflowCluster) -> Iterator[Runs]:
    """The job preempted twice (with a notice, then without one), finished; the other one running."""
    started = time.monotonic()
    live = cluster.trigger(RUNNING)
    done = cluster.trigger(PREEMPTED)
    preempt(cluster, done, 1, notice=True)
    preempt(cluster, done, 2, notice=False)
    state = cluster.wait_for_state(PREEMPTED, done, ("success", "failed", "up_for_retry"), 600)
    assert state == "success", cluster.ledger(PREEMPTED, done)
    TIMINGS["job preempted twice: trigger -> success"] = time.monotonic() - started
    wait_for(lambda: summary_status(cluster, RUNNING, live) == "running", 300, what="the gated job to run")
    yield Runs(done, live)
    gate = cluster.root / "gates" / live.replace(":", "_")
    gate.parent.mkdir(exist_ok=True)
    gate.touch()


def user(cluster: AirflowCluster, login: tuple[str, str] | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {cluster.token(login)}"} if login else {}
    return httpx.Client(base_url=cluster.base_url, headers=headers, timeout=60, trust_env=False)


@pytest.fixture(scope="module")
def admin(cluster: AirflowCluster) -> Iterator[httpx.Client]:
    with user(cluster, ADMIN) as client:
        yield client


@pytest.fixture(scope="module")
def outsider(cluster: AirflowCluster) -> Iterator[httpx.Client]:
    with user(cluster, OUTSIDER) as client:
        yield client


def get(client: httpx.Client, path: str, status: int = 200, **params: Any) -> dict[str, Any]:
    response = client.get(f"/spot/api/{path}", params=params)
    assert response.status_code == status, f"{path} {params}: {response.status_code} {response.text[:2000]}"
    return response.json()


def task(dag_id: str, run_id: str) -> dict[str, Any]:
    return {"dag_id": dag_id, "run_id": run_id, "task_id": "train"}


def jobs_of(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(job["dag_id"], job["run_id"]) for job in body["jobs"]]


# -- the API ---------------------------------------------------------------------------------------------
def test_attempts_are_the_ledger_one_to_one(cluster, runs, admin):
    job, ledger = cluster.ledger(PREEMPTED, runs.preempted)
    body = get(admin, "attempts", **task(PREEMPTED, runs.preempted))
    shown = body["attempts"]
    assert [a["attempt"] for a in shown] == [r["attempt"] for r in ledger] == job["numbers"] == [1, 2, 3]
    assert [a["status"] for a in shown] == ["preempted", "preempted", "succeeded"]
    for got, kept in zip(shown, ledger, strict=True):
        for name in ("try_number", "status", "instance_id", "instance_type", "zone", "market", "reason",
                     "exit_code", "backup_save", "restored_from", "last_checkpoint", "launched_at", "ended_at"):
            assert got[name] == kept[name], (name, got, kept)
        record = AttemptRecord.from_dict(kept)
        assert (got["seconds"], got["cost"]) == (round(record.seconds, 3), round(record.cost, 6))
    assert all(a["reason"] for a in shown) and len({a["instance_id"] for a in shown}) == 3
    assert shown[1]["backup_save"]["skipped"] is False and shown[1]["backup_save"]["uploaded"]
    assert shown[0]["notice_at"] is not None
    assert body["live"] is False
    assert body["totals"] == totals([AttemptRecord.from_dict(r) for r in ledger])
    assert (body["totals"]["attempts"], body["totals"]["preemptions"]) == (3, 2)
    assert body["totals"]["cost"] > 0 and body["totals"]["savings_pct"] is not None
    assert cluster.xcom(PREEMPTED, runs.preempted)["totals"]["preemptions"] == 2


def test_running_attempt_is_live(runs, admin):
    body = get(admin, "attempts", **task(RUNNING, runs.running))
    assert body["live"] is True
    assert [a["status"] for a in body["attempts"]] == ["running"]


def test_unknown_task_instance_is_404(runs, admin):
    get(admin, "attempts", 404, **task(PREEMPTED, "no-such-run"))


def test_jobs_show_the_ledger_counts_running_first(cluster, runs, admin):
    _, ledger = cluster.ledger(PREEMPTED, runs.preempted)
    body = get(admin, "jobs")
    assert body["total"] == 2
    assert jobs_of(body) == [(RUNNING, runs.running), (PREEMPTED, runs.preempted)]
    running_job, done = body["jobs"]
    assert (done["attempt"], done["status"], done["attempts"]) == (3, "succeeded", len(ledger))
    assert done["preemptions"] == sum(r["status"] == "preempted" for r in ledger) == 2
    assert done["map_index"] == -1 and done["backend"] == "local" and done["savings_pct"] is not None
    assert (running_job["status"], running_job["attempts"], running_job["preemptions"]) == ("running", 1, 0)
    datetime.fromisoformat(done["updated_at"])


def test_jobs_filters_and_pages(runs, admin):
    assert jobs_of(get(admin, "jobs", state="finished")) == [(PREEMPTED, runs.preempted)]
    assert jobs_of(get(admin, "jobs", state="running")) == [(RUNNING, runs.running)]
    assert jobs_of(get(admin, "jobs", dag_id=PREEMPTED)) == [(PREEMPTED, runs.preempted)]
    assert get(admin, "jobs", dag_id="no_such_dag") == {"total": 0, "jobs": []}
    first, second = get(admin, "jobs", limit=1), get(admin, "jobs", limit=1, offset=1)
    assert (first["total"], second["total"]) == (2, 2)
    assert jobs_of(first) + jobs_of(second) == [(RUNNING, runs.running), (PREEMPTED, runs.preempted)]
    assert get(admin, "jobs", offset=2)["jobs"] == []
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    past = (datetime.now(timezone.utc) - timedelta(days=1)).isoformat()
    assert get(admin, "jobs", since=future)["total"] == 0
    assert get(admin, "jobs", since=past)["total"] == 2


def test_stats_count_the_preemptions_per_placement(cluster, runs, admin):
    _, ledger = cluster.ledger(PREEMPTED, runs.preempted)
    body = get(admin, "stats")
    placement = next(p for p in body["placements"] if p["preemptions"])
    assert (placement["backend"], placement["instance_type"], placement["zone"]) == (
        "local", ledger[0]["instance_type"], ledger[0]["zone"])
    assert placement["preemptions"] == 2 and placement["attempts"] >= 3
    assert placement["preemptions_per_attempt_hour"] > 0 and placement["mean_seconds_to_preemption"] > 0
    assert body["cost"] > 0 and body["savings_pct"] is not None
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    assert all(p["preemptions"] == 0 for p in get(admin, "stats", since=future)["placements"])


def forged_tokens(cluster: AirflowCluster) -> list[str]:
    """The outsider's real token with its claims changed to the admin's (signature kept), and the admin's claims
    signed with a key that is not the deployment's."""
    real = cluster.token(OUTSIDER)
    claims = {**jwt.decode(real, options={"verify_signature": False}), "sub": ADMIN[0], "role": "ADMIN"}
    header, _, signature = real.split(".")
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return [f"{header}.{payload}.{signature}", jwt.encode(claims, "not-the-deployment-secret-" * 3, algorithm="HS512")]


@pytest.mark.parametrize("path", ["attempts", "jobs", "stats"])
def test_no_login_is_401_and_a_forged_token_is_refused(cluster, runs, path):
    params = task(PREEMPTED, runs.preempted)
    with user(cluster, None) as anonymous:
        assert anonymous.get(f"/spot/api/{path}", params=params).status_code == 401
    for token in forged_tokens(cluster):
        response = httpx.get(f"{cluster.base_url}/spot/api/{path}", params=params, trust_env=False, timeout=60,
                             headers={"Authorization": f"Bearer {token}"})
        assert response.status_code in (401, 403), response.text


def test_user_without_access_to_the_dag(runs, outsider):
    assert "detail" in get(outsider, "attempts", 403, **task(PREEMPTED, runs.preempted))
    get(outsider, "attempts", 200, **task(RUNNING, runs.running))  # a DAG it may read
    assert jobs_of(get(outsider, "jobs")) == [(RUNNING, runs.running)]
    assert get(outsider, "jobs", dag_id=PREEMPTED)["total"] == 0
    assert all(p["preemptions"] == 0 for p in get(outsider, "stats")["placements"])


@pytest.mark.parametrize(("path", "params", "name"), [
    ("attempts", {"map_index": "x"}, "map_index"),
    ("attempts", {"dag_id": None}, "dag_id"),  # left out
    ("jobs", {"limit": "0"}, "limit"),
    ("jobs", {"offset": "-1"}, "offset"),
    ("jobs", {"state": "bogus"}, "state"),
    ("jobs", {"since": "notatime"}, "since"),
    ("stats", {"since": "notatime"}, "since"),
])
def test_bad_parameters_are_400_naming_the_parameter(runs, admin, path, params, name):
    query = {**task(PREEMPTED, runs.preempted), **params} if path == "attempts" else params
    body = get(admin, path, 400, **{k: v for k, v in query.items() if v is not None})
    assert body["detail"].startswith(f"{name}:"), body


# -- the pages ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright; "
                                   "it drives the system's Chromium: no browser download)")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api.expect.set_options(timeout=120_000)  # a busy machine: the conditions are waited for, not timed
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def logged_in_page(browser: Any, cluster: AirflowCluster, login: tuple[str, str]) -> Any:
    """A page whose context carries the user's JWT cookie, as Airflow's login sets it."""
    context = browser.new_context(viewport={"width": 1920, "height": 1200}, base_url=cluster.base_url)
    context.add_cookies([{"name": "_token", "value": cluster.token(login), "url": cluster.base_url}])
    page = context.new_page()
    page.set_default_timeout(120_000)
    return page


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def attempts_tab(cluster: AirflowCluster, dag_id: str, run_id: str) -> str:
    return f"{cluster.base_url}/dags/{dag_id}/runs/{run_id}/tasks/train/plugin/spot"


def job_row(page: Any, dag_id: str, run_id: str) -> Any:
    return page.locator(f'[data-testid="spot-job-row"][data-key="{dag_id}/{run_id}/train/-1"]')


def screenshot(shown: Any, name: str) -> None:
    """The page down to the end of the app's content, for docs/ui.md."""
    box = shown.bounding_box()
    viewport = shown.page.viewport_size
    height = min(viewport["height"], box["y"] + box["height"] + 24)
    IMAGES.mkdir(parents=True, exist_ok=True)
    shown.page.screenshot(path=str(IMAGES / name), clip={"x": 0, "y": 0, "width": viewport["width"], "height": height})


def test_attempts_tab_shows_the_ledger(cluster, runs, admin, browser):
    body = get(admin, "attempts", **task(PREEMPTED, runs.preempted))
    page = logged_in_page(browser, cluster, ADMIN)
    page.goto(attempts_tab(cluster, PREEMPTED, runs.preempted))
    rows = page.get_by_test_id("spot-attempt-row")
    expect(rows).to_have_count(3)
    for row, attempt in zip(rows.all(), body["attempts"], strict=True):
        expect(row).to_have_attribute("data-status", attempt["status"])
        expect(row.get_by_test_id("spot-attempt-status")).to_have_text(attempt["status"])
        expect(row).to_contain_text(attempt["reason"])
        expect(row).to_contain_text(attempt["instance_id"])
    backup = body["attempts"][1]["backup_save"]
    expect(rows.nth(1).get_by_test_id("spot-attempt-backup")).to_contain_text(
        f"uploaded {len(backup['uploaded'])} file")
    expect(page.get_by_test_id("spot-total-preemptions")).to_have_text("2")
    expect(page.get_by_test_id("spot-total-savings")).to_have_text(f"{body['totals']['savings_pct']:.1f}%")
    expect(page.get_by_test_id("spot-timeline-bar")).to_have_count(3)
    expect(page.get_by_test_id("spot-attempts")).to_have_attribute("data-live", "false")
    screenshot(page.get_by_test_id("spot-attempts"), "ui-attempts.png")
    page.context.close()


def test_training_page_lists_the_jobs_and_links_to_the_tab(cluster, runs, browser):
    page = logged_in_page(browser, cluster, ADMIN)
    page.goto(f"{cluster.base_url}/plugin/spot-training")
    done, live = job_row(page, PREEMPTED, runs.preempted), job_row(page, RUNNING, runs.running)
    expect(done).to_have_attribute("data-status", "succeeded")
    expect(done.get_by_test_id("spot-job-preemptions")).to_have_text("2")
    expect(live).to_have_attribute("data-status", "running")
    running_first = f"{RUNNING}/{runs.running}/train/-1"
    expect(page.get_by_test_id("spot-job-row").first).to_have_attribute("data-key", running_first)
    expect(page.get_by_test_id("spot-stats-preemptions").filter(has_text="2")).to_have_count(1)
    screenshot(page.get_by_test_id("spot-training"), "ui-jobs.png")
    done.get_by_test_id("spot-job-link").click()
    page.wait_for_url(f"**/dags/{PREEMPTED}/runs/{runs.preempted}/tasks/train/plugin/spot")
    expect(page.get_by_test_id("spot-attempt-row")).to_have_count(3)
    page.context.close()


def test_outsider_sees_neither_the_job_nor_its_attempts(cluster, runs, browser):
    page = logged_in_page(browser, cluster, OUTSIDER)
    page.goto(f"{cluster.base_url}/plugin/spot-training")
    expect(job_row(page, RUNNING, runs.running)).to_be_visible()
    expect(job_row(page, PREEMPTED, runs.preempted)).to_have_count(0)
    page.goto(attempts_tab(cluster, PREEMPTED, runs.preempted))
    expect(page.get_by_test_id("spot-error")).to_have_attribute("data-http-status", "403")
    expect(page.get_by_test_id("spot-attempt-row")).to_have_count(0)
    page.context.close()
