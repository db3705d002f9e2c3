"""The plugin's JSON API (mounted by the api-server at ``/spot``), authorised like Airflow's own REST API.

- ``GET /spot/api/attempts``: one task instance's ledger (``requires_access_dag`` on its DAG);
- ``GET /spot/api/jobs``: a page of the spot jobs in the DAGs the user may read (filtered and paged in SQL);
- ``GET /spot/api/stats``: preemption rates per placement, spend and savings over a window;
- ``GET /spot/api/log``: one attempt's own log (the job's output and the agent's lines), from the checkpoint store;
- ``POST /spot/api/rehearse``: a rehearsed preemption of the running attempt (needs edit access to the DAG).
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations, and the Airflow dependencies in
# them are imported inside create_app (this module is imported by the api-server only, after Airflow is configured).
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse

from airflow_spot_provider.plugins.ledgers import (
    JobState,
    TaskKey,
    TaskLedger,
    placement_stats,
    read_jobs,
    read_task_ledger,
)
from airflow_spot_provider.plugins.progress import live_progress
from airflow_spot_provider.rehearsal import DEFAULT_GRACE, MAX_GRACE, RehearsalRefused, rehearse

#: The built React bundles (committed: users never run node).
DIST = Path(__file__).parent / "www" / "dist"
DEFAULT_STATS_DAYS = 30
MAX_LIMIT = 1000


def _since(value: str | None, name: str = "since") -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as err:
        raise HTTPException(400, f"{name}: not an ISO 8601 time ({value!r})") from err
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def create_app() -> FastAPI:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.api_fastapi.common.db.common import SessionDep
    from airflow.api_fastapi.core_api.security import (
        GetUserDep,
        ReadableDagsFilterDep,
        auth_manager_from_app,
        requires_access_dag,
    )
    from airflow.models.dag import DagModel

    app = FastAPI(title="airflow-spot-provider", description="Spot training attempts, jobs and statistics")
    # Airflow's dependencies find the auth manager on ``request.app.state``: in a mounted app that is this app,
    # whose state has none. Use the api-server's own (created at its start, after the plugins are loaded).
    app.dependency_overrides[auth_manager_from_app] = get_auth_manager

    @app.exception_handler(RequestValidationError)
    def bad_parameter(request: Request, error: RequestValidationError) -> JSONResponse:
        # Airflow's REST API answers a bad parameter with 400 and says which one.
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return JSONResponse({"detail": f"{where}: {first.get('msg')}"}, status_code=400)

    def ledger_of(session: Any, dag_id: str, run_id: str, task_id: str, map_index: int) -> TaskLedger:
        ledger = read_task_ledger(session, TaskKey(dag_id, run_id, task_id, map_index))
        if ledger is None:
            raise HTTPException(404, f"no spot ledger for {dag_id}/{run_id}/{task_id}[{map_index}]")
        return ledger

    @app.get("/api/attempts", dependencies=[Depends(requires_access_dag("GET"))])
    def attempts(session: SessionDep, user: GetUserDep, dag_id: str, run_id: str, task_id: str,
                 map_index: int = -1) -> dict:
        ledger = ledger_of(session, dag_id, run_id, task_id, map_index)
        current = ledger.current
        if current is not None and current.active:
            progress = live_progress(ledger.job.checkpoint_uri, ledger.job.conn_id, current.attempt)
            current.progress = progress or current.progress
        # The tab offers a rehearsal only to users who may change the DAG's runs: the POST's own check (with the
        # DAG's team, as requires_access_dag asks it).
        details = DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id, session=session))
        may_edit = get_auth_manager().is_authorized_dag(method="PUT", details=details, user=user)
        return {**ledger.to_dict(), "can_rehearse": bool(may_edit)}

    @app.get("/api/log", dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.TASK_LOGS))])
    def attempt_log(session: SessionDep, dag_id: str, run_id: str, task_id: str, attempt: int,
                    map_index: int = -1) -> PlainTextResponse:
        ledger = ledger_of(session, dag_id, run_id, task_id, map_index)
        if attempt not in {a.attempt for a in ledger.attempts} or not ledger.job.checkpoint_uri:
            raise HTTPException(404, f"attempt: no attempt {attempt} with a log in this ledger")
        from airflow_spot_provider.checkpoints.objectstorage import store_for

        text = store_for(ledger.job.checkpoint_uri, ledger.job.conn_id).read_attempt_log(attempt)
        if text is None:
            raise HTTPException(404, f"attempt: attempt {attempt} has not written a log (yet)")
        return PlainTextResponse(text)

    @app.post("/api/rehearse", dependencies=[Depends(requires_access_dag("PUT"))])
    def post_rehearsal(session: SessionDep, user: GetUserDep, dag_id: str, run_id: str, task_id: str,
                       map_index: int = -1,
                       grace: Annotated[float, Query(ge=0, le=MAX_GRACE, allow_inf_nan=False)] = DEFAULT_GRACE) -> dict:
        ledger = ledger_of(session, dag_id, run_id, task_id, map_index)
        try:
            done = rehearse(ledger.job, ledger.current, grace, requested_by=user.get_name())
        except RehearsalRefused as err:
            raise HTTPException(409, str(err)) from err
        return {"attempt": done.attempt, "instance_id": done.instance_id, "grace": done.grace}

    @app.get("/api/jobs")
    def jobs(session: SessionDep, readable: ReadableDagsFilterDep,
             state: JobState | None = None, dag_id: str | None = None,
             since: str | None = None, limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
             offset: Annotated[int, Query(ge=0)] = 0) -> dict:
        dag_ids = set(readable.value or ())
        if dag_id is not None:
            dag_ids &= {dag_id}
        page = read_jobs(session, dag_ids, _since(since), state, limit, offset)
        return {"total": page.total, "jobs": [row.to_dict() for row in page.rows]}

    @app.get("/api/stats")
    def stats(session: SessionDep, readable: ReadableDagsFilterDep, since: str | None = None) -> dict:
        moment = _since(since) or datetime.now(timezone.utc) - timedelta(days=DEFAULT_STATS_DAYS)
        dag_ids = set(readable.value or ())
        return {"since": moment.isoformat(), **placement_stats(session, dag_ids, moment.timestamp())}

    @app.get("/static/{name}")
    def bundle(name: str) -> FileResponse:
        path = DIST / name
        if path.suffix != ".js" or path.parent != DIST or not path.is_file():
            raise HTTPException(404, f"no bundle {name}")
        return FileResponse(path, media_type="text/javascript")

    return app

