"""Starting and stopping the real server processes the tests talk to (`mlflow server`, `mlflow models serve`,
Chromium): wait until an HTTP endpoint answers 200, and stop a process group with a bounded grace period.
Each process is started in its own session (start_new_session=True), so its workers go with it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import urllib.request
from typing import Callable

POLL_S = 0.5


def wait_until_up(proc: subprocess.Popen, url: str, timeout_s: float, why: Callable[[], str]) -> None:
    """Poll `url` until it answers 200. Raises RuntimeError with `why()` (the process's log, say) when the
    process exits first or `timeout_s` seconds pass."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer (process exit {proc.poll()}): {why()}")
        time.sleep(POLL_S)


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL it if it has not ended within `grace_s` (mlflow server can take
    20 s to honour SIGTERM), and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait(timeout=10)


MLFLOW_SERVER_START_S = 180.0


@contextlib.contextmanager
def mlflow_server(folder, uri: str, start_s: float = MLFLOW_SERVER_START_S):
    """A real `mlflow server` (the venv's, one worker) on a free loopback port over the store `uri`, run in
    `folder` with its log at folder/mlflow-server.log; yields its address, stopped after."""
    import sys
    from pathlib import Path

    from ops.stack import free_port

    port = free_port()
    exe = Path(sys.executable).parent / "mlflow"
    with open(Path(folder) / "mlflow-server.log", "wb") as log:
        proc = subprocess.Popen([str(exe) if exe.exists() else "mlflow", "server", "--host", "127.0.0.1", "--port",
                                 str(port), "--backend-store-uri", uri, "--workers", "1"],
                                cwd=folder, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(proc, url + "/health", start_s, lambda: f"see {log.name}")
            yield url
        finally:
            stop_group(proc)
