"""The stack's services: the commands that start the Prefect server, the MLflow server and the workers,
the work pool and the deployments, and `up` / `status` / `describe` over them.

Prefect and MLflow are driven through their command lines and HTTP APIs, never imported; the run
doctor (ops/runs.py) is called where `up` starts and `down` stops.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

from ops.runs import doctor
from ops.settings import (ENV_FILE, PROJECT_MARKER, QUIET_ENV, Settings, StackError, _redact,
                          prefect_database_url)
from ops.supervision import (Stack, _alive, _port_in_use, _wait_healthy, http_get, mlflow_healthy, pool_workers,
                             prefect_healthy, worker_names)

# --------------------------------------------------------------------------- commands


def _bin(name: str) -> str:
    """A console script of this interpreter's environment (the venv), else from PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise StackError(f"`{name}` not found next to {sys.executable} or on PATH; pip install -e '.[dev]'")
    return found


def base_env(stack_id: str, s: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(QUIET_ENV)
    env["DIFFLAB_STACK_ID"] = stack_id
    env["DIFFLAB_ROOT"] = str(s.project_dir)
    # The project's own flows/, tasks/, ops/ and src/ come first, whatever checkout the venv was installed from.
    paths = [str(s.project_dir / "src"), str(s.project_dir)]
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                 if p and p not in paths])
    env["PREFECT_API_URL"] = s.prefect_api_url
    env["MLFLOW_TRACKING_URI"] = s.tracking_uri
    return env


def prefect_server_cmd(s: Settings) -> list[str]:
    return [_bin("prefect"), "server", "start", "--host", s.host, "--port", str(s.prefect_port)]


def mlflow_server_cmd(s: Settings) -> list[str]:
    cmd = [_bin("mlflow"), "server", "--host", s.host, "--port", str(s.mlflow_port),
           "--backend-store-uri", s.backend_store_uri,
           "--artifacts-destination", s.artifacts_destination,
           "--workers", str(s.mlflow_server_workers)]
    if s.host not in ("127.0.0.1", "localhost", "::1"):
        # Reached from other machines: accept any Host header (put a proxy with auth in front in production).
        cmd += ["--allowed-hosts", os.environ.get("DIFFLAB_MLFLOW_ALLOWED_HOSTS", "*")]
    return cmd


def worker_cmd(s: Settings, name: str) -> list[str]:
    cmd = [_bin("prefect"), "worker", "start", "--pool", s.pool, "--type", "process", "--name", name,
           "--install-policy", "never"]
    if s.worker_limit > 0:
        cmd += ["--limit", str(s.worker_limit)]
    return cmd


def _run_cli(cmd: list[str], env: dict[str, str], timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, env=env, cwd=str(cwd or Path.cwd()), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"timed out after {timeout:.0f}s: {shlex.join(cmd)}") from exc


def ensure_work_pool(s: Settings, env: dict[str, str], timeout: float = 120.0) -> None:
    try:
        status, _ = http_get(f"{s.prefect_api_url.rstrip('/')}/work_pools/{s.pool}")
    except (OSError, urllib.error.URLError) as exc:
        raise StackError(f"Prefect API {s.prefect_api_url} unreachable: {exc}") from exc
    if status == 200:
        return
    res = _run_cli([_bin("prefect"), "--no-prompt", "work-pool", "create", s.pool, "--type", "process"], env, timeout)
    if res.returncode != 0:
        raise StackError(f"creating work pool {s.pool!r} failed:\n{res.stdout}\n{res.stderr}")


def deployments_in(prefect_file: Path) -> list[dict[str, Any]]:
    import yaml  # PyYAML comes with prefect and mlflow

    data = yaml.safe_load(prefect_file.read_text()) or {}
    return list(data.get("deployments") or [])


def deploy(s: Settings, env: dict[str, str], names: Iterable[str] = (), prefect_file: Path | None = None,
           timeout: float = 300.0, out: Callable[[str], None] = print) -> list[str]:
    """Register deployments of prefect.yaml whose entrypoint file exists; returns their `flow/name`s.
    Deployments of another work pool (the docker variant) only when named."""
    prefect_file = Path(prefect_file or s.project_dir / PROJECT_MARKER)
    wanted = set(names)
    chosen, skipped = [], []
    for d in deployments_in(prefect_file):
        path, _, func = str(d.get("entrypoint", "")).partition(":")
        label = f"{func}/{d.get('name')}"
        if wanted and d.get("name") not in wanted and label not in wanted:
            continue
        pool = (d.get("work_pool") or {}).get("name", s.pool)
        if not wanted and pool != s.pool:
            out(f"skipping {label}: its work pool {pool!r} is not {s.pool!r} (register it by name: "
                f"difflab stack serve --name {label})")
            continue
        (chosen if (prefect_file.parent / path).is_file() else skipped).append((label, d.get("name"), path))
    for label, _, path in skipped:
        out(f"skipping {label}: {path} does not exist yet")
    if not chosen:
        return []
    cmd = [_bin("prefect"), "--no-prompt", "deploy", "--prefect-file", str(prefect_file)]
    for label, _, _ in chosen:
        cmd += ["--name", label]
    # Leave {{ $DIFFLAB_ROOT }} in the pull step unresolved: each worker fills in its own checkout at run time.
    env = {k: v for k, v in env.items() if k != "DIFFLAB_ROOT"}
    res = _run_cli(cmd, env, timeout, cwd=prefect_file.parent)
    if res.returncode != 0:
        raise StackError(f"prefect deploy failed (exit {res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    labels = [label for label, _, _ in chosen]
    out("registered deployments: " + ", ".join(labels))
    return labels


def write_env_file(stack: Stack, s: Settings) -> Path:
    path = stack.dir / ENV_FILE
    path.write_text(
        "# source this file to talk to the running stack\n"
        f"export PREFECT_API_URL={shlex.quote(s.prefect_api_url)}\n"
        f"export MLFLOW_TRACKING_URI={shlex.quote(s.tracking_uri)}\n"
        f"export DIFFLAB_ROOT={shlex.quote(str(s.project_dir))}\n"
    )
    return path


def up(s: Settings, out: Callable[[str], None] = print) -> Stack:
    s = s.resolved()
    stack = Stack(s.state_dir)
    live = stack.live_services()
    if live:
        raise StackError(f"a stack is already running from {stack.dir} ({', '.join(x['name'] for x in live)}); "
                         f"run `difflab stack down` first")
    if stack.state:  # left over from a crash: clear whatever may remain
        stack.stop(timeout=5.0, out=out)
    if not s.workers_only:
        for name, port in (("prefect", s.prefect_port), ("mlflow", s.mlflow_port)):
            if _port_in_use(s.host, port):
                raise StackError(f"port {port} for {name} on {s.host} is already in use; pick another with "
                                 f"--{name}-port or DIFFLAB_{name.upper()}_PORT")
    stack_id = uuid.uuid4().hex
    stack.state = {"id": stack_id, "root": str(s.project_dir), "pool": s.pool, "prefect_api_url": s.prefect_api_url,
                   "tracking_uri": s.tracking_uri, "workers_only": s.workers_only,
                   "backend_store_uri": "" if s.workers_only else _redact(s.backend_store_uri),
                   "artifacts_destination": "" if s.workers_only else s.artifacts_destination,
                   "prefect_database": "" if s.workers_only else
                   _redact(prefect_database_url(s.prefect_database_url)) if s.prefect_database_url else
                   f"sqlite (under {os.environ.get('PREFECT_HOME') or stack.dir / 'prefect'})",
                   "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "services": []}
    stack.save()
    env = base_env(stack_id, s)
    try:
        if not s.workers_only:
            penv = dict(env)
            penv["PREFECT_HOME"] = os.environ.get("PREFECT_HOME") or str(stack.dir / "prefect")
            penv["PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED"] = "true" if s.prefect_scheduler else "false"
            penv["PREFECT_UI_API_URL"] = s.prefect_api_url
            if s.prefect_database_url:
                penv["PREFECT_API_DATABASE_CONNECTION_URL"] = prefect_database_url(s.prefect_database_url)
            prefect_proc = stack.start("prefect", prefect_server_cmd(s), penv, s.project_dir)
            menv = dict(env)
            menv.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # GenAI job runners: not used here
            if s.artifacts_destination and "://" not in s.artifacts_destination:
                Path(s.artifacts_destination).mkdir(parents=True, exist_ok=True)
            mlflow_proc = stack.start("mlflow", mlflow_server_cmd(s), menv, s.project_dir)
            out(f"waiting for the Prefect server on {s.prefect_api_url} and MLflow on {s.tracking_uri} ...")
            _wait_healthy(stack, "prefect", prefect_proc, lambda: prefect_healthy(s.prefect_api_url),
                          s.startup_timeout)
            _wait_healthy(stack, "mlflow", mlflow_proc, lambda: mlflow_healthy(s.tracking_uri), s.startup_timeout)
        elif not prefect_healthy(s.prefect_api_url):
            raise StackError(f"no Prefect server answers at {s.prefect_api_url}")
        ensure_work_pool(s, env)
        run_doctor(s.tracking_uri, s.prefect_api_url, out)
        wenv = dict(env)
        wenv["PREFECT_WORKER_QUERY_SECONDS"] = str(s.worker_poll_seconds)
        wenv["PREFECT_WORKER_HEARTBEAT_SECONDS"] = str(max(5.0, s.worker_poll_seconds))
        host = socket.gethostname().split(".")[0]
        names = [f"{host}-{stack_id[:6]}-w{i}" for i in range(1, s.workers + 1)]
        procs = [(n, stack.start(f"worker-{i}", worker_cmd(s, n), wenv, s.project_dir)) for i, n in enumerate(names, 1)]
        out(f"waiting for {len(names)} worker(s) to poll work pool {s.pool!r} ...")
        deadline = time.monotonic() + s.startup_timeout
        while set(names) - set(worker_names(s.prefect_api_url, s.pool)):
            for i, (n, p) in enumerate(procs, 1):
                if p.poll() is not None:
                    raise StackError(f"worker {n} exited with code {p.returncode}:\n{stack.log_tail(f'worker-{i}')}")
            if time.monotonic() > deadline:
                raise StackError(f"workers did not report to pool {s.pool!r} within {s.startup_timeout:.0f}s:\n"
                                 f"{stack.log_tail('worker-1')}")
            time.sleep(0.5)
        if s.deploy and not s.workers_only:
            deploy(s, env, out=out)
    except BaseException:
        out("start failed; stopping what was started")
        stack.stop(timeout=10.0, out=out)
        raise
    write_env_file(stack, s)
    out(describe(stack))
    return stack


def run_doctor(tracking_uri: str, prefect_api_url: str, out: Callable[[str], None] = print) -> None:
    """End the runs whose process died (ops/runs.py), e.g. those a `down` or a reboot killed."""
    try:
        doctor(tracking_uri, prefect_api_url, out=lambda line: out(f"run doctor: {line}"))
    except Exception as exc:  # noqa: BLE001 - never let housekeeping stop the stack from starting or stopping
        out(f"run doctor: skipped ({type(exc).__name__}: {exc})")



def describe(stack: Stack) -> str:
    st = stack.state
    if not st:
        return f"no stack recorded in {stack.dir}"
    lines = []
    if not st.get("workers_only"):
        ui = st["prefect_api_url"].rsplit("/api", 1)[0]
        lines += [f"Prefect UI      {ui}", f"Prefect API     {st['prefect_api_url']}",
                  f"MLflow UI       {st['tracking_uri']}",
                  f"MLflow store    {st.get('backend_store_uri')}  artifacts: {st.get('artifacts_destination')}"]
    else:
        lines += [f"Prefect API     {st['prefect_api_url']} (remote)", f"MLflow          {st['tracking_uri']} (remote)"]
    lines.append(f"project dir     {st.get('root', '?')}  (prefect.yaml and the code the workers run)")
    if st.get("prefect_database"):
        lines.append(f"Prefect store   {st['prefect_database']}")
    lines.append(f"work pool       {st['pool']}")
    for svc in st.get("services", []):
        state = "running" if _alive(svc["pid"], svc.get("start_time")) else "STOPPED"
        lines.append(f"  {svc['name']:<12} pid {svc['pid']:<8} {state:<8} log {svc['log']}")
    lines.append(f"shell setup     source {stack.dir / ENV_FILE}")
    return "\n".join(lines)


def status(stack: Stack, out: Callable[[str], None] = print) -> int:
    """0 when every recorded process runs and the servers answer, 3 when nothing is recorded, 1 otherwise."""
    st = stack.state
    if not st:
        out(f"no stack running (state dir {stack.dir})")
        return 3
    out(describe(stack))
    ok = len(stack.live_services()) == len(stack.services)
    p_ok = prefect_healthy(st["prefect_api_url"])
    m_ok = mlflow_healthy(st["tracking_uri"])
    out(f"Prefect API     {'healthy' if p_ok else 'NOT ANSWERING'}")
    out(f"MLflow server   {'healthy' if m_ok else 'NOT ANSWERING'}")
    if p_ok:
        workers = pool_workers(st["prefect_api_url"], st["pool"])
        out(f"workers online  {', '.join(workers['online']) or 'none'}")
        if workers["offline"]:
            out(f"workers offline {', '.join(workers['offline'])} (stopped or unreachable; Prefect keeps listing them)")
    return 0 if ok and p_ok and m_ok else 1
