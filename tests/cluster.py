"""A real Airflow 3.3 deployment for reliability tests: scheduler, dag-processor, triggerer(s), api-server.

:class:`AirflowCluster` owns a throwaway PostgreSQL database (``spot_test_<random>`` on 127.0.0.1:5432,
user ``postgres``, trust auth) and a temporary AIRFLOW_HOME. Every Airflow component runs as its own
subprocess in its own process group, with an environment built from scratch (never the ``AIRFLOW__*``
of the calling process), free ports for the API and the log servers, LocalExecutor, short heartbeats and
a short triggerer health threshold so HA reassignment happens in seconds. DAGs come from
``tests/cluster_dags``; ``extra_env`` passes chosen variables (a cloud connection, the DAGs' settings)
to every component and to the CLI.

Besides starting and killing components it offers REST helpers (trigger, task instance state, mark
failed, state store, XCom), direct reads of the metadata DB (which triggerer holds a trigger), the
``airflow-spot`` CLI with the cluster's environment, and :class:`AttemptMonitor`, which samples the
local backend in the background to prove that no job ever has two attempts alive at once.
"""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import psycopg2

from airflow_spot_provider.backends.base import CloudResource
from airflow_spot_provider.backends.local import LocalBackend

from . import waiting

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "tests" / "cluster_dags"
TRAINING = REPO / "dags_examples" / "training"
BIN = Path(sys.executable).parent  # the venv's bin: `airflow` and `airflow-spot` live next to python
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
# Seconds without a heartbeat before a triggerer's triggers move. Its heartbeats land every 2-4 s on a
# busy 2-core machine even at job_heartbeat_sec=1: 5 s moved triggers away from healthy triggerers.
TRIGGERER_HEALTH_THRESHOLD = 10
# Scheduler health threshold: also how long after a crash Airflow's own records show it is down.
SCHEDULER_HEALTH_THRESHOLD = 10
LIVE_STATES = ("pending", "running")
# Variables of the calling process that would point Airflow (or the backend) somewhere else.
FOREIGN_ENV_PREFIXES = ("AIRFLOW", "SPOT_", "_AIRFLOW", "PYTEST_")

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 0.5, what: str = "condition") -> T:
    """:func:`waiting.wait_for` at a slower pace: these predicates ask the REST API and the database."""
    return waiting.wait_for(predicate, timeout, interval, what)


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants (parents first)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def signal_processes(procs: list[psutil.Process], sig: int) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


@dataclass
class Component:
    """One Airflow process (and the children it forks), started in its own process group."""

    name: str
    argv: list[str]
    proc: subprocess.Popen
    log: Path
    env: dict[str, str]
    job_id: int | None = None  # the `job` table row of a triggerer

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tree(self) -> list[psutil.Process]:
        procs = process_tree(self.pid)
        # Forked task runners move to their own process group but stay descendants; also catch any
        # member of our group that was re-parented after its parent died.
        seen = {p.pid for p in procs}
        for proc in psutil.process_iter():
            try:
                if proc.pid not in seen and os.getpgid(proc.pid) == self.pid:
                    procs.append(proc)
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
        return procs


@dataclass
class AirflowCluster:
    root: Path
    db_name: str = field(default_factory=lambda: f"spot_test_{secrets.token_hex(4)}")
    components: list[Component] = field(default_factory=list)
    #: Added to every Airflow process's environment (and the CLI's), e.g. a cloud connection
    #: ``AIRFLOW_CONN_<ID>``: the calling process's own ``AIRFLOW*``/``SPOT_*`` variables never pass.
    extra_env: dict[str, str] = field(default_factory=dict)
    #: (username, password) the REST helpers log in as (``POST /auth/token``); None: the all-admins token,
    #: for the default ``simple_auth_manager_all_admins``.
    login: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        self.home = self.root / "airflow-home"
        self.logs = self.root / "logs"
        self.state_dir = self.root / "spot-local"
        self.data = self.root / "data.npz"
        for path in (self.home, self.logs, self.state_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.api_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.api_port}"
        self.env = self._environment()
        self._http: httpx.Client | None = None
        self._db_created = False

    # -- environment ---------------------------------------------------------------------------
    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_ENV_PREFIXES)}
        env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "/usr/bin:/bin")])
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "SPOT_CLUSTER_ROOT": str(self.root),
            "AIRFLOW_SPOT_LOCAL_DIR": str(self.state_dir),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN":
                f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{self.db_name}",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE": "3",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW": "5",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__AUTH_MANAGER":
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__WORKERS": "1",
            # Workers and triggerers call the api-server; on a loaded 2-core machine an answer can take longer
            # than the default 5 s, and a task whose first call times out fails before it starts.
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": str(SCHEDULER_HEALTH_THRESHOLD),
            "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "2",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(TRIGGERER_HEALTH_THRESHOLD),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "0",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            # Everything here talks to 127.0.0.1: never through a proxy set for the outside world.
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        })
        env.update(self.extra_env)
        return env

    # -- database ------------------------------------------------------------------------------
    def _admin(self) -> psycopg2.extensions.connection:
        conn = psycopg2.connect(dbname="postgres", connect_timeout=5, **PG)
        conn.autocommit = True
        return conn

    def create_database(self) -> None:
        conn = self._admin()
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{self.db_name}"')
            self._db_created = True
        finally:
            conn.close()

    def drop_database(self) -> None:
        if not self._db_created:
            return
        conn = self._admin()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                            "AND pid <> pg_backend_pid()", (self.db_name,))
                cur.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            self._db_created = False
        finally:
            conn.close()

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        """Read the metadata DB directly (a fresh connection: never a stale snapshot)."""
        conn = psycopg2.connect(dbname=self.db_name, connect_timeout=5, **PG)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall()
        finally:
            conn.close()

    # -- lifecycle -----------------------------------------------------------------------------
    def setup(self) -> None:
        """Database, schema and dataset: once per session."""
        self.create_database()
        self.run_airflow(["db", "migrate"], timeout=300)
        subprocess.run([sys.executable, str(TRAINING / "mlp.py"), "make-dataset", str(self.data)],
                       check=True, capture_output=True, timeout=120)

    def run_airflow(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(BIN / "airflow"), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.root)
        if proc.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return proc

    def run_cli(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        """``airflow-spot ARGS`` with the cluster's environment (its DB and state directory)."""
        return subprocess.run([str(BIN / "airflow-spot"), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.root)

    def start_component(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> Component:
        count = sum(1 for c in self.components if c.name == name)
        log = self.logs / f"{name}-{count + 1}.log"
        env = {**self.env, **(extra_env or {})}
        with open(log, "ab") as out:
            proc = subprocess.Popen([str(BIN / "airflow"), *args], env=env, cwd=self.root, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        component = Component(name, args, proc, log, env)
        self.components.append(component)
        return component

    def start_api_server(self) -> Component:
        api = self.start_component("api-server", ["api-server", "--host", "127.0.0.1", "--port", str(self.api_port)])
        wait_for(lambda: self._api_up(api), 180, what="the api-server to answer")
        return api

    def _api_up(self, api: Component) -> bool:
        if not api.alive():
            raise RuntimeError(f"the api-server exited ({api.proc.returncode}):\n{self.tail(api)}")
        try:
            return httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=2, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    def start_scheduler(self) -> Component:
        return self.start_component("scheduler", ["scheduler"])

    def start_dag_processor(self) -> Component:
        return self.start_component("dag-processor", ["dag-processor"])

    def start_triggerer(self, wait: bool = True) -> Component:
        """A new triggerer (its own log server port); with ``wait``, returns once its job row exists."""
        before = max(self.triggerer_job_ids(), default=0)
        handle = self.start_component("triggerer", ["triggerer"],
                                      {"AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port())})
        if wait:
            def registered() -> int | None:
                if not handle.alive():
                    raise RuntimeError(f"the triggerer exited ({handle.proc.returncode}):\n{self.tail(handle)}")
                new = [i for i in self.triggerer_job_ids() if i > before]
                return new[0] if new else None

            handle.job_id = wait_for(registered, 120, what="the triggerer's job row")
        return handle

    def start(self) -> None:
        """api-server first (tasks need its execution API), then the rest; wait until all are healthy."""
        self.start_api_server()
        self.start_dag_processor()
        self.start_scheduler()
        self.start_triggerer()
        wait_for(self.healthy, 180, what="every component to report healthy")

    def healthy(self) -> bool:
        for component in self.components:
            if component.name != "triggerer" and not component.alive():
                raise RuntimeError(f"{component.name} exited ({component.proc.returncode}):\n{self.tail(component)}")
        health = self.api("GET", "/api/v2/monitor/health").json()
        parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
        return all((health.get(part) or {}).get("status") == "healthy" for part in parts)

    def kill(self, handle: Component, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the component and every process it forked (task runners included)."""
        signal_processes(handle.tree(), sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            try:
                handle.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                signal_processes(handle.tree(), signal.SIGKILL)
                handle.proc.wait(timeout=10)

    def stop(self, handle: Component, timeout: float = 20) -> None:
        """Graceful stop (SIGTERM), then SIGKILL for whatever is left."""
        procs = handle.tree()
        signal_processes(procs, signal.SIGCONT)  # a frozen process cannot act on SIGTERM
        signal_processes(procs[:1], signal.SIGTERM)
        try:
            handle.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        signal_processes([p for p in procs if p.is_running()] + handle.tree(), signal.SIGKILL)
        handle.proc.wait(timeout=10)

    def stop_all(self) -> None:
        for handle in reversed(self.components):
            if handle.alive() or handle.tree():
                self.stop(handle)

    def kill_all(self) -> None:
        """SIGKILL every Airflow process at once: a crash of Airflow itself (detached attempts survive)."""
        procs = [proc for handle in self.components for proc in handle.tree()]
        signal_processes(procs, signal.SIGKILL)
        for handle in self.components:
            handle.proc.wait(timeout=30)
        psutil.wait_procs(procs, timeout=10)

    def close(self) -> None:
        """Stop everything this cluster started, including attempts still alive, and drop the database."""
        try:
            self.stop_all()
        finally:
            if self._http is not None:
                self._http.close()
            backend = LocalBackend(state_dir=str(self.state_dir))
            for item in backend.list_instances():
                backend.terminate(item.instance_id)
                backend.release(item.instance_id)
            self.drop_database()

    # -- diagnostics ---------------------------------------------------------------------------
    def tail(self, handle: Component, lines: int = 60) -> str:
        try:
            text = handle.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def log_tails(self, lines: int = 60) -> str:
        parts = [f"===== {h.log.name} (pid {h.pid}, {'alive' if h.alive() else 'exited'}) =====\n{self.tail(h, lines)}"
                 for h in self.components]
        task_logs = sorted((self.home / "logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)[-4:]
        for path in task_logs:
            text = path.read_text(errors="replace").splitlines()
            parts.append(f"===== task log {path.relative_to(self.home)} =====\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    # -- REST ----------------------------------------------------------------------------------
    def token(self, login: tuple[str, str] | None = None) -> str:
        """A JWT for ``login`` (username, password), or without one the all-admins token."""
        if login is None:
            response = httpx.get(f"{self.base_url}/auth/token", timeout=60, trust_env=False)
        else:
            response = httpx.post(f"{self.base_url}/auth/token", timeout=60, trust_env=False,
                                  json={"username": login[0], "password": login[1]})
        response.raise_for_status()
        return response.json()["access_token"]

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            token = self.token(self.login)
            self._http = httpx.Client(base_url=self.base_url, timeout=60, trust_env=False,
                                      headers={"Authorization": f"Bearer {token}"})
        return self._http

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        # A loaded machine can leave the api-server without an answer for a while: idempotent calls are asked
        # again (a POST is not: it could start a second run).
        tries = 1 if method == "POST" else 5
        for attempt in range(1, tries + 1):
            try:
                response = self.http.request(method, path, **kwargs)
                break
            except httpx.TransportError:
                if attempt == tries:
                    raise
        if response.status_code >= 400 and response.status_code != 404:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:2000]}")
        return response

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> dict[str, Any]:
        def parsed() -> dict[str, Any] | None:
            response = self.api("GET", f"/api/v2/dags/{dag_id}")
            return response.json() if response.status_code == 200 else None

        try:
            return wait_for(parsed, timeout, what=f"DAG {dag_id} to be parsed")
        except TimeoutError as err:
            errors = self.api("GET", "/api/v2/importErrors").json()
            raise TimeoutError(f"{err}; import errors: {errors}") from err

    def unpause(self, dag_id: str) -> None:
        self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, run_id: str | None = None) -> str:
        """Unpause ``dag_id`` and start a run; returns its run id."""
        self.wait_for_dag(dag_id)
        self.unpause(dag_id)
        run_id = run_id or f"{dag_id}-{secrets.token_hex(3)}"
        body = {"dag_run_id": run_id, "logical_date": None, "conf": conf or {}}
        return self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body).json()["dag_run_id"]

    def _ti_path(self, dag_id: str, run_id: str, task_id: str) -> str:
        return f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"

    def task_instance(self, dag_id: str, run_id: str, task_id: str = "train") -> dict[str, Any]:
        response = self.api("GET", self._ti_path(dag_id, run_id, task_id))
        return response.json() if response.status_code == 200 else {}

    def ti_state(self, dag_id: str, run_id: str, task_id: str = "train") -> str | None:
        return self.task_instance(dag_id, run_id, task_id).get("state")

    def try_number(self, dag_id: str, run_id: str, task_id: str = "train") -> int | None:
        return self.task_instance(dag_id, run_id, task_id).get("try_number")

    def set_ti_state(self, dag_id: str, run_id: str, state: str, task_id: str = "train") -> dict[str, Any]:
        """Mark the task instance ``failed`` / ``success`` (what a user does in the UI)."""
        return self.api("PATCH", self._ti_path(dag_id, run_id, task_id), json={"new_state": state}).json()

    def state_store(self, dag_id: str, run_id: str, task_id: str = "train") -> dict[str, Any]:
        body = self.api("GET", self._ti_path(dag_id, run_id, task_id) + "/state-store").json()
        return {entry["key"]: entry["value"] for entry in body.get("task_state_store", [])}

    def xcom(self, dag_id: str, run_id: str, task_id: str = "train", key: str = "return_value") -> Any:
        response = self.api("GET", self._ti_path(dag_id, run_id, task_id) + f"/xcomEntries/{key}",
                            params={"deserialize": True})
        return response.json().get("value") if response.status_code == 200 else None

    def wait_for_state(self, dag_id: str, run_id: str, states: tuple[str, ...], timeout: float,
                       task_id: str = "train") -> str:
        seen: list[str | None] = []

        def reached() -> str | None:
            state = self.ti_state(dag_id, run_id, task_id)
            if not seen or seen[-1] != state:
                seen.append(state)
            return state if state in states else None

        try:
            return wait_for(reached, timeout, what=f"{dag_id}/{run_id}/{task_id} to be one of {states}")
        except TimeoutError as err:
            raise TimeoutError(f"{err}; states seen: {seen}") from err

    # -- metadata DB reads ---------------------------------------------------------------------
    def triggerer_job_ids(self) -> list[int]:
        return [row[0] for row in self.sql("SELECT id FROM job WHERE job_type = 'TriggererJob' ORDER BY id")]

    def heartbeat_ages(self) -> dict[int, float]:
        """Triggerer job id → seconds since its last heartbeat (by the database's clock)."""
        rows = self.sql("SELECT id, EXTRACT(EPOCH FROM (now() - latest_heartbeat)) FROM job "
                        "WHERE job_type = 'TriggererJob' AND end_date IS NULL ORDER BY id")
        return {job_id: round(float(age), 2) for job_id, age in rows}

    def running_holder(self, dag_id: str, run_id: str) -> tuple[int, int]:
        """(trigger id, triggerer job id) once the triggerer holding the task's trigger has started running it."""
        def started() -> tuple[int, int] | None:
            holder = self.trigger_holder(dag_id, run_id)
            running = holder and holder[1] and "starting" in self.trigger_log(dag_id, run_id, holder[1])
            return holder if running else None

        return wait_for(started, 60, what="a triggerer to be running the trigger")

    def wait_deferral_reported(self, dag_id: str, run_id: str, task_id: str = "train", count: int = 1) -> None:
        """Until the scheduler has processed the executor's report of ``count`` worker runs of the task.

        Airflow 3.3.2 fails a task whose trigger fires before the scheduler saw the deferring worker exit, once
        the resumed task is already queued or running ("state changed externally"): a scenario that ends an
        attempt right after its launch waits for this first.
        """
        line = (f"Received executor event with state success for task instance TaskInstanceKey(dag_id='{dag_id}', "
                f"task_id='{task_id}', run_id='{run_id}'")

        def reported() -> bool:
            schedulers = [c for c in self.components if c.name == "scheduler"]
            return sum(c.log.read_text(errors="replace").count(line) for c in schedulers) >= count

        wait_for(reported, 120, what=f"the scheduler to process {count} worker exit(s) of {dag_id}/{run_id}")

    def ready_holder(self, dag_id: str, run_id: str) -> tuple[int, int]:
        """:meth:`running_holder`, once its triggerer can answer ``on_kill``'s task-state question at once (the
        trigger warms that up when it starts; before, the first answer can take longer than on_kill's budget)."""
        def ready() -> tuple[int, int] | None:
            # The warm-up can stall a triggerer's heartbeat long enough for the trigger to move: ask again
            # who holds it each time, until the holder is warm.
            holder = self.trigger_holder(dag_id, run_id)
            warm = holder and holder[1] and "task state API ready" in self.trigger_log(dag_id, run_id, holder[1])
            return holder if warm else None

        return wait_for(ready, 180, what="the trigger's holder to have its task state API ready")

    def wait_taken_over(self, dag_id: str, run_id: str, new: Component) -> None:
        """Until the ``new`` triggerer holds the task's trigger (or the task is no longer deferred)."""
        def picked_up() -> bool:
            now = self.trigger_holder(dag_id, run_id)
            return bool(now and now[1] == new.job_id) or self.ti_state(dag_id, run_id) != "deferred"

        wait_for(picked_up, 60 + TRIGGERER_HEALTH_THRESHOLD, what="the new triggerer to take the trigger")

    def wait_until_down(self) -> None:
        """After a crash: until the metadata DB no longer looks live (its newest heartbeat is past the threshold)."""
        wait_for(lambda: self.newest_heartbeat_age() > SCHEDULER_HEALTH_THRESHOLD + 1, 60,
                 what="Airflow's last heartbeat to pass the health threshold")

    def ledger(self, dag_id: str, run_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The job record and the attempt records from the task's state store."""
        store = self.state_store(dag_id, run_id)
        attempts = [store[key] for key in sorted(store) if key.startswith("spot.attempt.")]
        return store.get("spot.job") or {}, attempts

    def trigger_holder(self, dag_id: str, run_id: str, task_id: str = "train") -> tuple[int, int | None] | None:
        """(trigger id, triggerer job id) of the task's current trigger, or None when it has none."""
        rows = self.sql("SELECT t.id, t.triggerer_id FROM trigger t JOIN task_instance ti ON ti.trigger_id = t.id "
                        "WHERE ti.dag_id = %s AND ti.run_id = %s AND ti.task_id = %s", (dag_id, run_id, task_id))
        return rows[0] if rows else None

    def newest_heartbeat_age(self) -> float:
        """Seconds since any scheduler or triggerer last heartbeat (how long Airflow has looked down)."""
        rows = self.sql("SELECT EXTRACT(EPOCH FROM (now() - max(latest_heartbeat))) FROM job "
                        "WHERE job_type IN ('SchedulerJob', 'TriggererJob')")
        return float(rows[0][0]) if rows and rows[0][0] is not None else float("inf")

    def trigger_log(self, dag_id: str, run_id: str, triggerer_job_id: int, try_number: int = 1,
                    task_id: str = "train") -> str:
        """What one triggerer logged for the task's trigger (Airflow writes one file per triggerer job)."""
        path = (self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
                / f"attempt={try_number}.log.trigger.{triggerer_job_id}.log")
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def triggerer(self, job_id: int) -> Component | None:
        return next((c for c in self.components if c.name == "triggerer" and c.job_id == job_id), None)

    # -- worker processes ----------------------------------------------------------------------
    @staticmethod
    def task_runner(ti_id: str) -> psutil.Process | None:
        """The task-runner process of a task instance (its title is ``airflow worker -- <ti id>``)."""
        for proc in psutil.process_iter(["cmdline", "status"]):
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if f"airflow worker -- {ti_id}" in " ".join(proc.info["cmdline"] or []):
                return proc
        return None


def job_of(item: CloudResource) -> tuple[str, str]:
    return item.tags["spot-dag-id"], item.tags["spot-run-id"]


def attempt_processes(state_dir: Path) -> dict[str, list[int]]:
    """Instance id → pids of live processes (host, agent) running for it."""
    marker = str(state_dir / "instances") + os.sep
    found: dict[str, list[int]] = collections.defaultdict(list)
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        for arg in proc.info["cmdline"] or []:
            if arg.startswith(marker):
                found[arg[len(marker):].split(os.sep)[0]].append(proc.pid)
                break
    return dict(found)


class AttemptMonitor:
    """Samples the local backend in the background: the most attempts any job had alive at once,
    by the backend's records and by running processes."""

    def __init__(self, state_dir: Path, interval: float = 0.25) -> None:
        self.backend = LocalBackend(state_dir=str(state_dir))
        self.state_dir = state_dir
        self.interval = interval
        self.max_live: collections.Counter[tuple[str, str]] = collections.Counter()
        self.max_with_processes: collections.Counter[tuple[str, str]] = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="attempt-monitor", daemon=True)

    def __enter__(self) -> AttemptMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        items = self.backend.list_instances()
        running = attempt_processes(self.state_dir)
        live = collections.Counter(job_of(i) for i in items if i.state in LIVE_STATES)
        with_procs = collections.Counter(job_of(i) for i in items if i.instance_id in running)
        for job, count in live.items():
            self.max_live[job] = max(self.max_live[job], count)
        for job, count in with_procs.items():
            self.max_with_processes[job] = max(self.max_with_processes[job], count)

    def instances(self, dag_id: str, run_id: str) -> list[CloudResource]:
        return [i for i in self.backend.list_instances() if job_of(i) == (dag_id, run_id)]


# -- what the scenario modules share: a running cluster, timings, logs on failure ------------------------
@contextlib.contextmanager
def running(airflow: AirflowCluster, timings: dict[str, float]) -> Iterator[AirflowCluster]:
    """Set up and start ``airflow``; print its log tails if that fails; always close it."""
    try:
        started = time.monotonic()
        airflow.setup()
        airflow.start()
        timings["cluster start (db migrate + all components healthy)"] = time.monotonic() - started
        yield airflow
    except BaseException:
        print(airflow.log_tails())
        raise
    finally:
        airflow.close()


def print_timings(request: Any, title: str, timings: dict[str, float]) -> None:
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n{title} (seconds):")
        for name, seconds in timings.items():
            print(f"  {name}: {seconds:.1f}")


def logs_after_failure(cluster: AirflowCluster, request: Any, capsys: Any) -> Iterator[None]:
    """Body of an autouse fixture: the Airflow logs, when the test just failed."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        with capsys.disabled():
            print(f"\n----- Airflow logs after {request.node.name} -----\n{cluster.log_tails()}")


class Timings(dict):
    """Recovery times by scenario step, printed as they are measured and again at the end."""

    def record(self, capsys: Any, name: str, seconds: float) -> None:
        self[name] = seconds
        with capsys.disabled():
            print(f"\n[timing] {name}: {seconds:.1f}s")

    @staticmethod
    def info(capsys: Any, message: str) -> None:
        with capsys.disabled():
            print(f"\n[info] {message}")
