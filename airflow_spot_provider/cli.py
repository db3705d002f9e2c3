"""``airflow-spot``: chaos (``preempt``, ``rehearse``), visibility (``status``) and cleanup (``sweep``).

``preempt`` and ``status`` work on the local backend's state directory without importing Airflow, so
they answer at once; ``sweep`` asks Airflow's metadata database which jobs are still live, on any backend.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from airflow_spot_provider.backends.base import CloudResource
from airflow_spot_provider.backends.local import LocalBackend, default_state_dir


def _job(item: CloudResource) -> str:
    tags = item.tags
    return f"{tags['spot-dag-id']}/{tags['spot-run-id']}/{tags['spot-task-id']}"


def _select(backend: LocalBackend, target: str | None, everything: bool) -> list[CloudResource]:
    live = [item for item in backend.list_instances() if item.running]
    if everything:
        return live
    return [item for item in live if target in (item.instance_id, _job(item))]


def cmd_preempt(backend: LocalBackend, args: argparse.Namespace) -> int:
    if not args.all and not args.target:
        print("preempt: name an instance id, a job as DAG_ID/RUN_ID/TASK_ID, or --all", file=sys.stderr)
        return 2
    chosen = _select(backend, args.target, args.all)
    if not chosen:
        print(f"preempt: no running attempt matches {args.target or '--all'}", file=sys.stderr)
        return 1
    for item in chosen:
        backend.preempt(item.instance_id, notice=not args.no_notice, grace=args.grace)
        how = "without notice" if args.no_notice else "with an interruption notice"
        print(f"preempting {item.instance_id} (attempt {item.attempt} of {_job(item)}) {how}")
    return 0


def _progress(backend: LocalBackend, instance_id: str) -> str:
    try:
        data = json.loads((backend.instances / instance_id / "disk" / ".spot-progress.json").read_text())
    except (FileNotFoundError, ValueError):
        return ""
    return ", ".join(f"{k} {data[k]}" for k in ("epoch", "step") if data.get(k) is not None)


def cmd_status(backend: LocalBackend, args: argparse.Namespace) -> int:
    items = sorted(backend.list_instances(), key=lambda item: item.facts.launched_at or 0)
    if not args.all:
        items = [item for item in items if item.running]
    if args.json:
        print(json.dumps([item.to_dict() for item in items], indent=1, sort_keys=True))
        return 0
    if not items:
        print(f"no {'' if args.all else 'running '}attempts in {backend.state_dir}")
        return 0
    now = time.time()
    for item in items:
        facts = item.facts
        age = (facts.ended_at or now) - (facts.launched_at or now)
        print(f"{facts.instance_id}  {facts.state.value:<10} attempt {item.attempt:<3} {_job(item)}  "
              f"{facts.instance_type} {facts.market} {age:6.1f}s  {facts.reason or ''}  "
              f"{_progress(backend, facts.instance_id)}".rstrip())
    return 0


def cmd_rehearse(backend: LocalBackend, args: argparse.Namespace) -> int:
    """A rehearsed preemption of a job's running attempt, on any backend (found through Airflow's database)."""
    from airflow.utils.session import create_session

    from airflow_spot_provider.plugins.ledgers import TaskKey, read_task_ledger
    from airflow_spot_provider.rehearsal import DEFAULT_GRACE, RehearsalRefused, rehearse

    parts = args.target.split("/")
    if len(parts) != 3 or not all(parts):
        print("rehearse: name the job as DAG_ID/RUN_ID/TASK_ID", file=sys.stderr)
        return 2
    with create_session() as session:
        ledger = read_task_ledger(session, TaskKey(*parts, args.map_index))
    if ledger is None:
        print(f"rehearse: {args.target} has no spot ledger in this Airflow", file=sys.stderr)
        return 1
    try:
        grace = DEFAULT_GRACE if args.grace is None else args.grace
        done = rehearse(ledger.job, ledger.current, grace, requested_by="airflow-spot rehearse")
    except RehearsalRefused as err:
        print(f"rehearse: {err}", file=sys.stderr)
        return 1
    print(f"rehearsal posted for attempt {done.attempt} ({done.instance_id}): its agent gives the job the "
          f"interruption notice within seconds and ends it {done.grace:g}s later if it has not exited")
    return 0


def _sweep_backends(args: argparse.Namespace) -> list:
    from airflow_spot_provider.backends import get_backend

    options: dict[str, Any] = {}
    for pair in args.option or []:
        key, _, value = pair.partition("=")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    if args.backend == "local":
        options.setdefault("state_dir", args.state_dir or default_state_dir())
    return [get_backend(args.backend, options, conn_id=args.conn_id)]


ASSUME_DOWN_WARNING = (
    "WARNING: --assume-down: Airflow is taken to be down without waiting for its heartbeats to age, so every job "
    "counts as not live, including tasks the database still shows as running or deferred. If any scheduler or "
    "triggerer is still running (on any machine), its jobs' VMs and disks are deleted under it.")


def cmd_sweep(backend: LocalBackend, args: argparse.Namespace) -> int:
    """Leftovers of jobs that are no longer live in Airflow (asked through its metadata database)."""
    from airflow_spot_provider.sweep import AirflowLooksUp, airflow_db_liveness, assumed_down_liveness, sweep

    if args.assume_down and args.heartbeat_seconds is not None:
        print("sweep: --heartbeat-seconds has no effect with --assume-down (which reads no threshold); "
              "give one or the other", file=sys.stderr)
        return 2
    if args.no_airflow:
        is_live = None
    else:
        try:
            is_live = assumed_down_liveness() if args.assume_down else airflow_db_liveness(args.heartbeat_seconds)
        except AirflowLooksUp as err:
            print(f"sweep: refusing --assume-down: {err}. Stop it (or wait until it has missed its heartbeats); "
                  "nothing was deleted.", file=sys.stderr)
            return 2
        except Exception as err:  # noqa: BLE001 - any failure to reach Airflow means: delete nothing
            print(f"sweep: cannot ask Airflow which jobs are live ({err}); nothing was deleted. "
                  "Use --no-airflow to remove only the disks of finished attempts.", file=sys.stderr)
            return 2
    if args.assume_down:
        print(ASSUME_DOWN_WARNING, file=sys.stderr)
    found = 0
    for target in _sweep_backends(args):
        found += sweep(target, is_live, args.delete, print)
    if not found:
        print("nothing to sweep")
    elif not args.delete:
        print("dry run: add --delete to remove these")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="airflow-spot", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", default=None,
                        help=f"local backend state directory (default: {default_state_dir()})")
    sub = parser.add_subparsers(dest="command", required=True)
    preempt = sub.add_parser("preempt", help="reclaim running attempts now, like the spot market does")
    preempt.add_argument("target", nargs="?", help="instance id, or DAG_ID/RUN_ID/TASK_ID")
    preempt.add_argument("--all", action="store_true", help="every running attempt")
    preempt.add_argument("--no-notice", action="store_true", help="kill without an interruption notice")
    preempt.add_argument("--grace", type=float, default=None, help="seconds between the notice and the kill")
    rehearse = sub.add_parser("rehearse", help="rehearse a preemption of a job's running attempt on any backend "
                                                 "(an interruption notice through the checkpoint store)")
    rehearse.add_argument("target", help="the job as DAG_ID/RUN_ID/TASK_ID")
    rehearse.add_argument("--map-index", type=int, default=-1)
    rehearse.add_argument("--grace", type=float, default=None,
                          help="seconds between the notice and the end of the job (default: 30)")
    status = sub.add_parser("status", help="running attempts (--all: every attempt on record)")
    status.add_argument("--all", action="store_true")
    status.add_argument("--json", action="store_true")
    sweep = sub.add_parser("sweep", help="find (and with --delete remove) VMs, disks and helpers of jobs that "
                                         "are no longer live in Airflow")
    sweep.add_argument("--delete", action="store_true", help="remove them (default: only print)")
    sweep.add_argument("--backend", default="local", choices=("local", "aws", "gcp"))
    sweep.add_argument("--conn-id", default=None, help="Airflow connection of the cloud API (aws/gcp)")
    sweep.add_argument("--option", action="append", metavar="KEY=VALUE",
                       help="backend option, e.g. region_name=us-east-1 (JSON values allowed); repeatable")
    airflow_view = sweep.add_mutually_exclusive_group()
    airflow_view.add_argument("--no-airflow", action="store_true",
                              help="do not ask Airflow: only the disks of finished attempts are removed")
    airflow_view.add_argument("--assume-down", action="store_true",
                              help="Airflow is known to be down: every job counts as not live, without waiting "
                                   "for its heartbeats to age (refused while a scheduler or triggerer heartbeated "
                                   "moments ago); still a dry run without --delete")
    sweep.add_argument("--heartbeat-seconds", type=float, default=None,
                       help="Airflow counts as down when no scheduler/triggerer heartbeat is this recent "
                            "(default: [scheduler] scheduler_health_check_threshold)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    backend = LocalBackend(**({"state_dir": args.state_dir} if args.state_dir else {}))
    handler = {"preempt": cmd_preempt, "rehearse": cmd_rehearse, "status": cmd_status, "sweep": cmd_sweep}[
        args.command]
    return handler(backend, args)


if __name__ == "__main__":
    sys.exit(main())
