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

This module talks to Prefect and MLflow only through their command lines and
HTTP APIs, never by importing them (the run doctor, imported when it runs, uses MLflow's client).

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
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from difflab import ENV_DEFAULTS
from difflab.procs import alive, proc_start_time

PROJECT_MARKER = "prefect.yaml"
"""A project folder is the nearest folder, from where the command runs upwards, that holds this file."""


def find_project_dir(explicit: str | Path | None = None, start: Path | None = None) -> Path:
    """The project the stack serves: --project-dir / $DIFFLAB_PROJECT_DIR, else the nearest folder
    from the current one upwards with a prefect.yaml. Never where the package is installed: a venv
    shared by two checkouts, or a non-editable install, must not decide whose code runs."""
    chosen = explicit or os.environ.get("DIFFLAB_PROJECT_DIR")
    if chosen:
        path = Path(chosen).expanduser().resolve()
        if not (path / PROJECT_MARKER).is_file():
            raise StackError(f"project dir {path} has no {PROJECT_MARKER}; give the folder of a difflab checkout")
        return path
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / PROJECT_MARKER).is_file():
            return folder
    raise StackError(f"no {PROJECT_MARKER} in {here} or above; run from a difflab checkout or pass --project-dir")

QUIET_ENV = {**ENV_DEFAULTS, "PYTHONUNBUFFERED": "1"}
"""What every process the stack starts gets: difflab's own switches, and logs that arrive as they happen."""

STATE_FILE = "state.json"
SERVER_NAMES = ("prefect", "mlflow")
"""Services stopped last, so that the run doctor can still reach them."""


class StackError(RuntimeError):
    pass

ENV_FILE = "env"




# --------------------------------------------------------------------------- settings


@dataclass
class Settings:
    state_dir: Path
    project_dir: Path = Path(".")
    """The checkout whose prefect.yaml is deployed and whose code the workers run."""
    host: str = "127.0.0.1"
    advertise_host: str = ""
    """The name other machines and browsers use for this one (default: the bind address, loopback for 0.0.0.0)."""
    prefect_port: int = 4200
    mlflow_port: int = 5000
    workers: int = 1
    pool: str = "difflab"
    """The process work pool; prefect.yaml's deployments name the same one."""
    backend_store_uri: str = ""
    artifacts_destination: str = ""
    workers_only: bool = False
    prefect_api_url: str = ""
    tracking_uri: str = ""
    deploy: bool = True
    startup_timeout: float = 180.0
    worker_poll_seconds: float = 5.0
    worker_limit: int = 0
    """Most flow runs one worker runs at once (0: no limit). A sweep's own run holds a slot while it waits."""
    mlflow_server_workers: int = 1
    prefect_scheduler: bool = True
    prefect_database_url: str = ""
    """Prefect server's own database: empty for SQLite under the state dir, or postgresql+asyncpg://..."""

    def resolved(self) -> "Settings":
        # The server's own store, not the ./mlflow.db of runs made without a server: an experiment the
        # server creates keeps `mlflow-artifacts:/` locations, which a client without the server cannot use.
        if not self.backend_store_uri:
            self.backend_store_uri = f"sqlite:///{self.state_dir / 'mlflow.db'}"
        if not self.artifacts_destination:
            self.artifacts_destination = str(self.state_dir / "mlartifacts")
        name = self.advertise_host or _url_host(self.host)
        if not self.prefect_api_url:
            self.prefect_api_url = f"http://{name}:{self.prefect_port}/api"
        if not self.tracking_uri:
            self.tracking_uri = f"http://{name}:{self.mlflow_port}"
        return self


def _url_host(host: str) -> str:
    """A host to dial: a wildcard bind address is reached on loopback."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _env(name: str, default: Any) -> Any:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return type(default)(value) if default is not None and not isinstance(default, str) else value


def default_state_dir(project_dir: Path) -> Path:
    return Path(os.environ.get("DIFFLAB_STACK_DIR") or project_dir / ".stack").resolve()


# --------------------------------------------------------------------------- processes


_proc_start_time = proc_start_time
_alive = alive


def _pids_with_env(token: str) -> list[int]:
    """Processes whose environment carries the stack id (Linux; empty elsewhere)."""
    needle = f"DIFFLAB_STACK_ID={token}".encode()
    found = []
    me = os.getpid()
    for entry in Path("/proc").glob("[0-9]*") if Path("/proc").is_dir() else []:
        pid = int(entry.name)
        if pid == me:
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            found.append(pid)
    return found


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((_url_host(host), port)) == 0


# --------------------------------------------------------------------------- state


class Stack:
    """The processes of one stack, recorded under its state directory."""

    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir).resolve()
        self.logs = self.dir / "logs"
        self.path = self.dir / STATE_FILE
        self.state: dict[str, Any] = self._load()

    def _load(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        tmp.replace(self.path)

    @property
    def services(self) -> list[dict[str, Any]]:
        return self.state.setdefault("services", [])

    def live_services(self) -> list[dict[str, Any]]:
        return [s for s in self.services if _alive(s["pid"], s.get("start_time"))]

    def start(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{name}.log"
        with open(log_path, "ab") as log:
            log.write(f"\n==> {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=env, cwd=str(cwd), start_new_session=True)
        self.services.append({"name": name, "pid": proc.pid, "pgid": proc.pid,
                              "start_time": _proc_start_time(proc.pid), "cmd": cmd, "log": str(log_path)})
        self.save()
        return proc

    def log_tail(self, name: str, lines: int = 40) -> str:
        try:
            text = (self.logs / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0, out: Callable[[str], None] = print,
             between: Callable[[], None] | None = None) -> int:
        """Stop the workers and every other process carrying the stack id (flow runs) first, then call
        `between` (the run doctor, while the servers still answer), then the servers. SIGTERM, and
        SIGKILL what is left after `timeout`. Returns how many processes were signalled."""
        token = self.state.get("id")
        live = [s for s in reversed(self.services) if _alive(s["pid"], s.get("start_time"))]
        servers = [s for s in live if s["name"] in SERVER_NAMES]
        server_groups = {s["pgid"] for s in servers}

        def _pgid(pid: int) -> int | None:
            try:
                return os.getpgid(pid)
            except OSError:
                return None

        def carrying_id(include_servers: bool) -> list[int]:
            pids = _pids_with_env(token) if token else []
            return pids if include_servers else [p for p in pids if _pgid(p) not in server_groups]

        signalled = 0
        for phase, groups in (("workers", [s for s in live if s not in servers]), ("servers", servers)):
            include_servers = phase == "servers"
            for s in groups:
                out(f"stopping {s['name']} (pid {s['pid']})")
                _signal_group(s["pgid"], signal.SIGTERM)
            stragglers = carrying_id(include_servers)
            for pid in stragglers:
                _signal_pid(pid, signal.SIGTERM)
            signalled += len(groups) + len(stragglers)

            def remaining() -> list[int]:
                left = [s["pid"] for s in groups if _alive(s["pid"], s.get("start_time"))]
                return left + carrying_id(include_servers)

            if not _wait_until(lambda: not remaining(), timeout):
                for s in groups:
                    _signal_group(s["pgid"], signal.SIGKILL)
                for pid in remaining():
                    _signal_pid(pid, signal.SIGKILL)
                _wait_until(lambda: not remaining(), 5.0)
            left = remaining()
            if left:
                out(f"warning: still running after SIGKILL: {left}")
            if phase == "workers" and between is not None:
                try:
                    between()
                except Exception as exc:  # noqa: BLE001 - housekeeping must not keep the stack up
                    out(f"warning: the run doctor failed: {exc}")
        self.state = {}
        with _suppress(OSError):
            self.path.unlink()
        with _suppress(OSError):
            (self.dir / ENV_FILE).unlink()
        return signalled


class _suppress:
    def __init__(self, *exc: type[BaseException]):
        self.exc = exc

    def __enter__(self) -> None:
        return None

    def __exit__(self, et, ev, tb) -> bool:
        return et is not None and issubclass(et, self.exc)


# --------------------------------------------------------------------------- health


def http_get(url: str, timeout: float = 3.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_json(method: str, url: str, body: Any = None, timeout: float = 10.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", "Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def _answers(url: str) -> bool:
    try:
        status, _ = http_get(url, timeout=2.0)
    except (OSError, urllib.error.URLError):
        return False
    return status == 200


def prefect_healthy(api_url: str) -> bool:
    return _answers(api_url.rstrip("/") + "/health")


def mlflow_healthy(tracking_uri: str) -> bool:
    return _answers(tracking_uri.rstrip("/") + "/health")


def _wait_healthy(stack: Stack, name: str, proc: subprocess.Popen, check: Callable[[], bool], timeout: float) -> None:
    ok = _wait_until(lambda: proc.poll() is not None or check(), timeout, interval=0.5)
    if proc.poll() is not None:
        raise StackError(f"{name} exited with code {proc.returncode} while starting; "
                         f"last lines of {stack.logs / (name + '.log')}:\n{stack.log_tail(name)}")
    if not ok:
        raise StackError(f"{name} did not become healthy within {timeout:.0f}s; "
                         f"last lines of {stack.logs / (name + '.log')}:\n{stack.log_tail(name)}")


def pool_workers(api_url: str, pool: str) -> dict[str, list[str]]:
    """The pool's workers by Prefect's status: {"online": [...], "offline": [...]}; the server marks a
    worker OFFLINE when its heartbeats stop, but keeps listing it."""
    try:
        workers = http_json("POST", f"{api_url.rstrip('/')}/work_pools/{pool}/workers/filter", {})
    except (OSError, urllib.error.URLError, ValueError):
        workers = []
    found: dict[str, list[str]] = {"online": [], "offline": []}
    for w in workers or []:
        found["online" if str(w.get("status", "")).upper() == "ONLINE" else "offline"].append(w["name"])
    return found


def worker_names(api_url: str, pool: str) -> list[str]:
    """Workers of the pool that are online now."""
    return pool_workers(api_url, pool)["online"]


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


def prefect_database_url(url: str) -> str:
    """Prefect's server needs an async driver: postgresql://... becomes postgresql+asyncpg://..."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+asyncpg://" + url[len(plain):]
    return url


def run_doctor(tracking_uri: str, prefect_api_url: str, out: Callable[[str], None] = print) -> None:
    """End the runs whose process died (ops/runs.py), e.g. those a `down` or a reboot killed."""
    from ops.runs import doctor

    try:
        doctor(tracking_uri, prefect_api_url, out=lambda line: out(f"run doctor: {line}"))
    except Exception as exc:  # noqa: BLE001 - never let housekeeping stop the stack from starting or stopping
        out(f"run doctor: skipped ({type(exc).__name__}: {exc})")


def _redact(uri: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db"""
    if "://" in uri and "@" in uri:
        scheme, rest = uri.split("://", 1)
        creds, hostpart = rest.rsplit("@", 1)
        if ":" in creds:
            creds = creds.split(":", 1)[0] + ":***"
        return f"{scheme}://{creds}@{hostpart}"
    return uri


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
