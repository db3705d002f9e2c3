"""The UI plugin against real Airflow 3.3 processes (scheduler, dag-processor, triggerer, api-server on PostgreSQL).

One job is preempted twice (with a notice, then without one: backup-save) and finishes; another runs until the
module ends. The plugin's JSON API (``/spot/api/...``) must show exactly what the ledgers hold (and each attempt's
own log, as the store keeps it), authorise like Airflow's REST API (per DAG: ``spot_auth_manager`` denies one user
one DAG) and refuse bad parameters by name. Then a browser (Playwright driving Chromium) opens the "Spot attempts"
tab and the "Spot training" page, checks what they show and takes screenshots (``SPOT_UI_SCREENSHOTS=DIR`` keeps
them there; ``docs/images`` holds the ones ``docs/ui.md`` shows, taken with ``SPOT_UI_SCREENSHOTS=docs/images``).
Last, a third job gets rehearsed preemptions: through the API, then through the tab's button.
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

PREEMPTED, RUNNING, REHEARSED = "spot_cluster_ui_preempted", "spot_cluster_ui_running", "spot_cluster_ui_rehearsed"
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


def store_dir(cluster: AirflowCluster, dag_id: str, run_id: str) -> Path:
    """The job's checkpoint prefix (``file://`` in the cluster DAGs)."""
    return cluster.root / "checkpoints" / dag_id / run_id.replace(":", "_")


def attempt_dir(cluster: AirflowCluster, dag_id: str, run_id: str, attempt: int) -> Path:
    """Where the store keeps one attempt's markers and its log."""
    return store_dir(cluster, dag_id, run_id) / ".spot" / "attempts" / f"{attempt:04d}"


def marker(cluster: AirflowCluster, dag_id: str, run_id: str, attempt: int, name: str) -> dict[str, Any] | None:
    """One of the attempt's markers in the store (None: not there, or not all written yet)."""
    try:
        return json.loads((attempt_dir(cluster, dag_id, run_id, attempt) / f"{name}.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def open_gate(cluster: AirflowCluster, run_id: str) -> None:
    """Let a gated job's run end (``tests/cluster_dags/gated_job.py``)."""
    gate = cluster.root / "gates" / run_id.replace(":", "_")
    gate.parent.mkdir(exist_ok=True)
    gate.touch()


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
    store = store_dir(cluster, PREEMPTED, run_id)
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
    open_gate(cluster, live)


@pytest.fixture(scope="module")
def rehearsed(cluster: AirflowCluster, runs: Runs) -> Iterator[str]:
    """A third gated job, running, for the rehearsals. Triggered by the first test that asks for it, the module's
    last ones: until then the two jobs above are all there is (the jobs tests count them and their order)."""
    run_id = cluster.trigger(REHEARSED)
    wait_for(lambda: summary_status(cluster, REHEARSED, run_id) == "running", 300, what="the job to rehearse on to run")
    yield run_id
    open_gate(cluster, run_id)


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


def answer(client: httpx.Client, method: str, path: str, status: int, **params: Any) -> httpx.Response:
    response = client.request(method, f"/spot/api/{path}", params=params)
    assert response.status_code == status, f"{method} {path} {params}: {response.status_code} {response.text[:2000]}"
    return response


def get(client: httpx.Client, path: str, status: int = 200, **params: Any) -> dict[str, Any]:
    return answer(client, "GET", path, status, **params).json()


def post(client: httpx.Client, path: str, status: int = 200, **params: Any) -> dict[str, Any]:
    return answer(client, "POST", path, status, **params).json()


def attempt_log(client: httpx.Client, dag_id: str, run_id: str, attempt: int, status: int = 200) -> str:
    return answer(client, "GET", "log", status, **task(dag_id, run_id), attempt=attempt).text


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


@pytest.mark.parametrize("path", ["attempts", "jobs", "stats", "log"])
def test_no_login_is_401_and_a_forged_token_is_refused(cluster, runs, path):
    params = {**task(PREEMPTED, runs.preempted), "attempt": 1}
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
    ("log", {"attempt": "x"}, "attempt"),
    ("log", {}, "attempt"),  # left out
    ("jobs", {"limit": "0"}, "limit"),
    ("jobs", {"offset": "-1"}, "offset"),
    ("jobs", {"state": "bogus"}, "state"),
    ("jobs", {"since": "notatime"}, "since"),
    ("stats", {"since": "notatime"}, "since"),
])
def test_bad_parameters_are_400_naming_the_parameter(runs, admin, path, params, name):
    query = {**task(PREEMPTED, runs.preempted), **params} if path in ("attempts", "log") else params
    body = get(admin, path, 400, **{k: v for k, v in query.items() if v is not None})
    assert body["detail"].startswith(f"{name}:"), body


def test_attempt_log_is_the_stores_copy_of_the_jobs_output_and_the_agents_lines(cluster, runs, admin):
    text = attempt_log(admin, PREEMPTED, runs.preempted, 1)
    assert text == (attempt_dir(cluster, PREEMPTED, runs.preempted, 1) / "log").read_text()
    assert "starting fresh (attempt 1)" in text and "epoch 1/" in text  # the job's output
    assert "[agent] interruption notice" in text  # the agent's lines: attempt 1 got a notice
    assert "[agent]" in attempt_log(admin, PREEMPTED, runs.preempted, 3)
    assert "no attempt 9" in attempt_log(admin, PREEMPTED, runs.preempted, 9, status=404)


def test_attempt_log_needs_read_access_to_the_dags_task_logs(runs, outsider):
    assert "detail" in json.loads(attempt_log(outsider, PREEMPTED, runs.preempted, 1, status=403))

    def copied() -> tuple[int, str] | None:  # the agent copies a running attempt's log on its sync rounds
        response = outsider.get("/spot/api/log", params={**task(RUNNING, runs.running), "attempt": 1})
        return None if response.status_code == 404 else (response.status_code, response.text)

    status, text = wait_for(copied, 60, what="the running attempt's log in the store")
    assert status == 200 and "[agent]" in text  # a DAG it may read


# -- the pages ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if os.environ.get("CI") and not CHROMIUM.exists():  # CI installs it: a skip there would hide the UI's tests
        pytest.fail(f"no Chromium at {CHROMIUM} in CI")
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
    """The page down to the end of ``shown``, for docs/ui.md."""
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


def test_attempt_log_opens_with_its_lines_wrapped(cluster, runs, browser):
    page = logged_in_page(browser, cluster, ADMIN)
    page.goto(attempts_tab(cluster, PREEMPTED, runs.preempted))
    rows = page.get_by_test_id("spot-attempt-row")
    expect(rows).to_have_count(3)
    rows.nth(0).get_by_test_id("spot-attempt-log-button").click()
    log = page.get_by_test_id("spot-attempt-log")
    expect(log).to_contain_text("starting fresh (attempt 1)")
    expect(log).to_contain_text("[agent] interruption notice")
    # Lines wrap: the box never scrolls sideways, and it ends inside the page.
    assert log.evaluate("box => box.scrollWidth <= box.clientWidth")
    box = log.bounding_box()
    assert box["x"] + box["width"] <= page.viewport_size["width"]
    rows.nth(2).get_by_test_id("spot-attempt-log-button").click()  # another attempt's log replaces it
    expect(page.get_by_test_id("spot-attempt-log-panel")).to_contain_text("Log of attempt #3")
    expect(log).not_to_contain_text("starting fresh (attempt 1)")
    rows.nth(2).get_by_test_id("spot-attempt-log-button").click()
    expect(page.get_by_test_id("spot-attempt-log-panel")).to_have_count(0)
    page.context.close()


def test_rehearse_button_only_for_a_user_who_may_edit_a_live_job(cluster, runs, browser):
    admin_page, viewer_page = logged_in_page(browser, cluster, ADMIN), logged_in_page(browser, cluster, OUTSIDER)
    for page in (admin_page, viewer_page):
        page.goto(attempts_tab(cluster, RUNNING, runs.running))
        expect(page.get_by_test_id("spot-attempt-row")).to_have_count(1)
        expect(page.get_by_test_id("spot-live")).to_be_visible()
    expect(admin_page.get_by_test_id("spot-rehearse-button")).to_be_enabled()
    expect(viewer_page.get_by_test_id("spot-rehearse-button")).to_have_count(0)  # a viewer may not edit the DAG
    admin_page.goto(attempts_tab(cluster, PREEMPTED, runs.preempted))  # a finished job
    expect(admin_page.get_by_test_id("spot-attempt-row")).to_have_count(3)
    expect(admin_page.get_by_test_id("spot-rehearse-button")).to_have_count(0)
    admin_page.context.close()
    viewer_page.context.close()


# -- rehearsals (last: they add a third job) -------------------------------------------------------------------
def current_attempt(cluster: AirflowCluster, run_id: str, status: str) -> dict[str, Any] | None:
    _, attempts = cluster.ledger(REHEARSED, run_id)
    return attempts[-1] if attempts and attempts[-1]["status"] == status else None


def test_rehearsal_preempts_the_running_attempt_and_the_job_goes_on_in_the_same_try(cluster, runs, rehearsed,
                                                                                      admin, outsider):
    job = task(REHEARSED, rehearsed)
    assert (get(admin, "attempts", **job)["can_rehearse"], get(outsider, "attempts", **job)["can_rehearse"]) == (
        True, False)
    assert "detail" in post(outsider, "rehearse", 403, **job)  # may read the DAG, not edit it
    assert "no running attempt" in post(admin, "rehearse", 409, **task(PREEMPTED, runs.preempted))["detail"]
    assert post(admin, "rehearse", 400, **job, grace=-1)["detail"].startswith("grace:")
    first = wait_for(lambda: current_attempt(cluster, rehearsed, "running"), 60, what="attempt 1 to run")
    started = time.monotonic()
    assert post(admin, "rehearse", **job) == {"attempt": 1, "instance_id": first["instance_id"], "grace": 30.0}
    asked = marker(cluster, REHEARSED, rehearsed, 1, "rehearsal")
    assert (asked["grace"], asked["by"]) == (30.0, ADMIN[0])

    def relaunched() -> list[dict[str, Any]] | None:
        _, attempts = cluster.ledger(REHEARSED, rehearsed)
        return attempts if len(attempts) > 1 and attempts[1]["status"] in ("running", "succeeded") else None

    preempted, second = wait_for(relaunched, 300, what="attempt 2 to run after the rehearsal")
    TIMINGS["rehearsal: POST -> attempt 2 running"] = time.monotonic() - started
    assert preempted["status"] == "preempted" and preempted["reason"].startswith("rehearsed preemption"), preempted
    assert (preempted["try_number"], second["try_number"], cluster.try_number(REHEARSED, rehearsed)) == (1, 1, 1)
    assert preempted["notice_at"] is not None, preempted
    # The relaunch resumed from the checkpoint the rehearsed attempt synced (the ledger has it once attempt 2 ends).
    restored = wait_for(lambda: (marker(cluster, REHEARSED, rehearsed, 2, "started") or {}).get("restored_from"), 60,
                        what="attempt 2's agent to restore")
    assert restored.startswith("ckpt-"), restored
    assert [a["status"] for a in get(admin, "attempts", **job)["attempts"]] == ["preempted", second["status"]]


def test_rehearse_button_asks_then_posts(cluster, rehearsed, browser):
    running = wait_for(lambda: current_attempt(cluster, rehearsed, "running"), 300, what="an attempt to run")
    number = running["attempt"]
    page = logged_in_page(browser, cluster, ADMIN)
    page.goto(attempts_tab(cluster, REHEARSED, rehearsed))
    rows = page.get_by_test_id("spot-attempt-row")
    expect(rows).to_have_count(number)
    page.get_by_test_id("spot-rehearse-button").click()
    dialog = page.get_by_test_id("spot-rehearse-dialog")
    expect(dialog).to_contain_text(f"attempt #{number}")
    expect(dialog).to_contain_text(running["instance_id"])
    page.get_by_test_id("spot-rehearse-grace").fill("5")
    expect(dialog).to_contain_text("not exited 5 s later")
    screenshot(dialog, "ui-rehearse.png")
    started = time.monotonic()
    page.get_by_test_id("spot-rehearse-confirm").click()
    expect(page.get_by_test_id("spot-rehearse-result")).to_have_attribute("data-attempt", str(number))
    expect(dialog).to_be_hidden()
    asked = marker(cluster, REHEARSED, rehearsed, number, "rehearsal")
    assert (asked["grace"], asked["by"]) == (5.0, ADMIN[0])
    # The tab refreshes while the job is live: the attempt shows as preempted, and the next one comes.
    expect(rows.nth(number - 1)).to_have_attribute("data-status", "preempted")
    expect(rows.nth(number - 1)).to_contain_text("rehearsed preemption")
    expect(rows).to_have_count(number + 1)
    TIMINGS["rehearsal in the tab: confirm -> next attempt shown"] = time.monotonic() - started
    page.context.close()
