"""The local operations stack: a Prefect server, a process work pool with workers, an MLflow server.

    python -m ops.stack up [--workers N]   # start everything on loopback, register the deployments
    python -m ops.stack status             # what runs, where, and whether it answers
    python -m ops.stack serve              # (re)register the deployments of prefect.yaml
    python -m ops.stack env                # export lines for a shell: PREFECT_API_URL, MLFLOW_TRACKING_URI
    python -m ops.stack down               # stop everything `up` started, even after a crash

Every process is started in its own session (process group) and recorded in
`<state dir>/state.json` as soon as it exists, with its start time so that a
recycled pid is never signalled. Every process also carries a unique
`DIFFLAB_STACK_ID` in its environment, inherited by everything it spawns; `down`
stops the recorded process groups and then any process still carrying the id
(Prefect starts each flow run in a session of its own). `down` stops the workers
and flow runs first, then runs the run doctor (ops/runs.py) while the servers still
answer, then stops the servers; `up` runs the doctor too.

The stack serves one project folder: --project-dir, $DIFFLAB_PROJECT_DIR, else the
nearest folder from the current one upwards with a prefect.yaml (never the folder the
package happens to be installed from).

The stack talks to Prefect and MLflow only through their command lines and
HTTP APIs, never by importing them (the run doctor, imported when it runs, uses MLflow's client).
This module is the command line; the work is in ops/settings.py (where and how: `Settings`),
ops/supervision.py (the processes, the state file, health checks) and ops/services.py (the
server and worker commands, deployments, `up`, `status`). Its names are re-exported here.

Settings: flags, else environment variables, else defaults:
    DIFFLAB_PROJECT_DIR                     the nearest folder upwards with a prefect.yaml
    DIFFLAB_STACK_DIR                       .stack (under the project folder)
    DIFFLAB_STACK_HOST                      127.0.0.1 (bind address; 0.0.0.0 to serve other machines)
    DIFFLAB_ADVERTISE_HOST                  the bind address (the name other machines use for this one)
    DIFFLAB_PREFECT_PORT                    4200
    DIFFLAB_MLFLOW_PORT                     5000
    DIFFLAB_WORKERS                         1
    DIFFLAB_WORKER_LIMIT                    0 (no limit on concurrent flow runs per worker)
    DIFFLAB_MLFLOW_BACKEND_STORE_URI        sqlite:///<state dir>/mlflow.db  (or postgresql://user:pw@host:5432/mlflow)
    DIFFLAB_MLFLOW_ARTIFACTS_DESTINATION    <state dir>/mlartifacts     (or s3://bucket/prefix; MLFLOW_S3_ENDPOINT_URL for MinIO)
    DIFFLAB_MLFLOW_SERVER_WORKERS           1 (uvicorn processes of the MLflow server; more for a team)
    DIFFLAB_PREFECT_DATABASE_URL            SQLite under the state dir (or postgresql://user:pw@host:5432/prefect)
    DIFFLAB_PREFECT_API_URL                 with --workers-only: the remote Prefect server's API (else PREFECT_API_URL)
    DIFFLAB_TRACKING_URI                    with --workers-only: the remote MLflow server (else MLFLOW_TRACKING_URI)
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path

from ops.services import (_bin, _run_cli, base_env, deploy, deployments_in, describe, ensure_work_pool,  # noqa: F401
                          mlflow_server_cmd, prefect_server_cmd, run_doctor, status, up, worker_cmd, write_env_file)
from ops.settings import (ENV_FILE, PROJECT_MARKER, QUIET_ENV, SERVER_NAMES, STATE_FILE, Settings,  # noqa: F401
                          StackError, _env, _redact, default_state_dir, find_project_dir, prefect_database_url)
from ops.supervision import (Stack, _alive, _pids_with_env, _port_in_use, _wait_until, free_port,  # noqa: F401
                             http_get, http_json, mlflow_healthy, pool_workers, prefect_healthy, worker_names)

# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="difflab stack", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--project-dir", type=Path, default=None,
                   help="the checkout to serve: its prefect.yaml is deployed and its code runs (default: "
                        "$DIFFLAB_PROJECT_DIR, else the nearest folder from here upwards with a prefect.yaml)")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="where pids, logs and the Prefect server's database live "
                        "(default: $DIFFLAB_STACK_DIR or <project dir>/.stack)")
    sub = p.add_subparsers(dest="command", required=True)

    u = sub.add_parser("up", help="start the Prefect server, workers and the MLflow server; register deployments")
    u.add_argument("--host", default=_env("DIFFLAB_STACK_HOST", "127.0.0.1"),
                   help="bind address of both servers (default 127.0.0.1; 0.0.0.0 to accept other machines)")
    u.add_argument("--advertise-host", default=_env("DIFFLAB_ADVERTISE_HOST", ""),
                   help="host name by which workers on other machines and browsers reach this one")
    u.add_argument("--prefect-port", type=int, default=_env("DIFFLAB_PREFECT_PORT", 4200))
    u.add_argument("--mlflow-port", type=int, default=_env("DIFFLAB_MLFLOW_PORT", 5000))
    u.add_argument("--workers", type=int, default=_env("DIFFLAB_WORKERS", 1), help="process workers to start")
    u.add_argument("--backend-store-uri", default=_env("DIFFLAB_MLFLOW_BACKEND_STORE_URI", ""),
                   help="MLflow backend store (default sqlite:///.stack/mlflow.db; postgresql://... for a team)")
    u.add_argument("--artifacts-destination", default=_env("DIFFLAB_MLFLOW_ARTIFACTS_DESTINATION", ""),
                   help="where the MLflow server stores artifacts (default .stack/mlartifacts; s3://bucket/prefix)")
    u.add_argument("--no-deploy", dest="deploy", action="store_false", help="do not register the deployments")
    u.add_argument("--no-scheduler", dest="scheduler", action="store_false",
                   help="do not let the Prefect server create scheduled runs")
    u.add_argument("--workers-only", action="store_true",
                   help="start only workers, for the servers named by --prefect-api-url and --tracking-uri")
    u.add_argument("--prefect-database-url", default=_env("DIFFLAB_PREFECT_DATABASE_URL", ""),
                   help="the Prefect server's own database (default SQLite under the state dir; "
                        "postgresql://user:pw@host:5432/prefect, driven by asyncpg)")
    u.add_argument("--prefect-api-url", default=_env("DIFFLAB_PREFECT_API_URL", "") or _env("PREFECT_API_URL", ""),
                   help="with --workers-only (default $DIFFLAB_PREFECT_API_URL, else $PREFECT_API_URL)")
    u.add_argument("--tracking-uri", default=_env("DIFFLAB_TRACKING_URI", "") or _env("MLFLOW_TRACKING_URI", ""),
                   help="with --workers-only (default $DIFFLAB_TRACKING_URI, else $MLFLOW_TRACKING_URI)")
    u.add_argument("--worker-limit", type=int, default=_env("DIFFLAB_WORKER_LIMIT", 0),
                   help="most flow runs each worker runs at once (default 0: no limit)")
    u.add_argument("--worker-poll-seconds", type=float, default=_env("DIFFLAB_WORKER_POLL_SECONDS", 5.0))
    u.add_argument("--timeout", type=float, default=_env("DIFFLAB_STACK_TIMEOUT", 180.0),
                   help="seconds each component may take to become healthy")

    sub.add_parser("down", help="stop everything `up` started")
    sub.add_parser("status", help="show the processes and whether the servers answer")
    sub.add_parser("env", help="print export lines for PREFECT_API_URL and MLFLOW_TRACKING_URI")
    sv = sub.add_parser("serve", help="register (or update) the deployments of prefect.yaml with the running server")
    sv.add_argument("--name", action="append", default=[], help="only this deployment (name or flow/name); repeatable")
    sv.add_argument("--prefect-file", type=Path, default=None)
    sv.add_argument("--prefect-api-url", default="",
                    help="a Prefect server this stack did not start (e.g. compose.yaml's); default: the stack's")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        project_dir = find_project_dir(args.project_dir)
    except StackError as exc:
        if args.command == "up" or args.state_dir is None and not os.environ.get("DIFFLAB_STACK_DIR"):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        project_dir = Path.cwd()  # status/down/env of an explicit state dir need no project
    state_dir = (args.state_dir or default_state_dir(project_dir)).resolve()
    stack = Stack(state_dir)
    try:
        if args.command == "up":
            if args.workers_only and not (args.prefect_api_url and args.tracking_uri):
                raise StackError("--workers-only needs --prefect-api-url and --tracking-uri "
                                 "(or PREFECT_API_URL and MLFLOW_TRACKING_URI, as `source .stack/env` sets them)")
            s = Settings(state_dir=state_dir, project_dir=project_dir, host=args.host, advertise_host=args.advertise_host,
                         prefect_port=args.prefect_port,
                         mlflow_port=args.mlflow_port, workers=args.workers,
                         backend_store_uri=args.backend_store_uri, artifacts_destination=args.artifacts_destination,
                         workers_only=args.workers_only,
                         prefect_api_url=args.prefect_api_url if args.workers_only else "",
                         tracking_uri=args.tracking_uri if args.workers_only else "",
                         deploy=args.deploy, startup_timeout=args.timeout,
                         worker_poll_seconds=args.worker_poll_seconds, worker_limit=args.worker_limit,
                         prefect_scheduler=args.scheduler, prefect_database_url=args.prefect_database_url,
                         mlflow_server_workers=_env("DIFFLAB_MLFLOW_SERVER_WORKERS", 1))
            up(s)
            return 0
        if args.command == "down":
            if not stack.state:
                print(f"no stack recorded in {state_dir}")
                return 0
            st = dict(stack.state)
            stack.stop(between=lambda: run_doctor(st["tracking_uri"], st["prefect_api_url"]))
            print("stack stopped")
            return 0
        if args.command == "status":
            return status(stack)
        if args.command == "env":
            if not stack.state:
                print(f"# no stack running (state dir {state_dir})", file=sys.stderr)
                return 3
            print((state_dir / ENV_FILE).read_text(), end="")
            return 0
        if args.command == "serve":
            if args.prefect_api_url:  # a server this stack did not start (compose's, a team's)
                s = Settings(state_dir=state_dir, project_dir=project_dir, prefect_api_url=args.prefect_api_url,
                             tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", "unused")).resolved()
                stack_id = "serve-" + uuid.uuid4().hex
            else:
                if not stack.state:
                    raise StackError("no stack recorded; start one with `difflab stack up`, or name a server "
                                     "with --prefect-api-url")
                s = Settings(state_dir=state_dir, project_dir=Path(stack.state.get("root") or project_dir),
                             pool=stack.state["pool"], prefect_api_url=stack.state["prefect_api_url"],
                             tracking_uri=stack.state["tracking_uri"]).resolved()
                stack_id = stack.state["id"]
            if not prefect_healthy(s.prefect_api_url):
                raise StackError(f"no Prefect server answers at {s.prefect_api_url}; start it with `difflab stack up`")
            env = base_env(stack_id, s)
            ensure_work_pool(s, env)
            deploy(s, env, names=args.name, prefect_file=args.prefect_file)
            return 0
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
