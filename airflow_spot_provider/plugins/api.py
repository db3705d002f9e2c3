"""The plugin's JSON API (mounted by the api-server at ``/spot``), authorised like Airflow's own REST API.

- ``GET /spot/api/attempts``: one task instance's ledger (``requires_access_dag`` on its DAG);
- ``GET /spot/api/jobs``: a page of the spot jobs in the DAGs the user may read (filtered and paged in SQL);
- ``GET /spot/api/stats``: preemption rates per placement, spend and savings over a window.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations, and the Airflow dependencies in
# them are imported inside create_app (this module is imported by the api-server only, after Airflow is configured).
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse

from airflow_spot_provider.plugins.ledgers import TaskKey, placement_stats, read_jobs, read_task_ledger
from airflow_spot_provider.plugins.progress import live_progress

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
    from airflow.api_fastapi.common.db.common import SessionDep
    from airflow.api_fastapi.core_api.security import ReadableDagsFilterDep, auth_manager_from_app, requires_access_dag

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

    @app.get("/api/attempts", dependencies=[Depends(requires_access_dag("GET"))])
    def attempts(session: SessionDep, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict:
        ledger = read_task_ledger(session, TaskKey(dag_id, run_id, task_id, map_index))
        if ledger is None:
            raise HTTPException(404, f"no spot ledger for {dag_id}/{run_id}/{task_id}[{map_index}]")
        current = ledger.current
        if current is not None and current.active:
            progress = live_progress(ledger.job.checkpoint_uri, ledger.job.conn_id, current.attempt)
            current.progress = progress or current.progress
        return ledger.to_dict()

    @app.get("/api/jobs")
    def jobs(session: SessionDep, readable: ReadableDagsFilterDep,
             state: Literal["running", "finished"] | None = None, dag_id: str | None = None,
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

