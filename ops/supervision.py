"""The stack's processes and their health: start each in its own session, record it in the state file,
stop it (and everything carrying the stack id) even after a crash, and ask the servers whether they answer.

Prefect and MLflow are reached only over HTTP here, never imported.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from difflab.procs import alive, proc_start_time
from ops.settings import ENV_FILE, SERVER_NAMES, STATE_FILE, StackError, _url_host

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
