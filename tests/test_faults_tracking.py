"""Issue 8, item 3: a dead tracking server stops a run in one line: at once at start, within a minute mid-run,
with the local checkpoints kept for the rerun to resume from."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from difflab import tracking
from difflab.cli import main
from difflab.config import TrackingConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def dead_uri():
    """A port that is bound but not listening: connections are refused, and no one else can take it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


def test_dead_server_at_start_is_one_line_naming_the_uri(dead_uri, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead_uri)
    assert main(["part-b", "--profile", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and dead_uri in err[0] and "not reachable" in err[0] and "MLFLOW_TRACKING_URI" in err[0]
    assert not (tmp_path / ".difflab").exists()  # nothing started


def test_http_timeouts_get_sane_defaults_but_user_values_win(monkeypatch, tmp_path):
    for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "42")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'unused.db'}")  # not in the checkout
    tracking.configure(TrackingConfig())
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"  # MLflow's 7 with backoff 2 waits minutes
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "42"


def test_a_refused_mlflow_call_reads_as_unreachable(dead_uri, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(Exception) as info:
        MlflowClient(tracking_uri=dead_uri).get_experiment_by_name("difflab")
    assert tracking.is_unreachable(info.value)
    assert not tracking.is_unreachable(ValueError("epochs must be > 0"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(folder: Path, port: int) -> subprocess.Popen:
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{folder / 's.db'}",
                             "--default-artifact-root", str(folder / "art"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], cwd=folder, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            tracking.probe(TrackingConfig(tracking_uri=f"http://127.0.0.1:{port}", probe_timeout_s=2))
            return proc
        except tracking.TrackingUnreachable:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("mlflow server did not start")


def test_server_killed_mid_run_fails_fast_and_keeps_checkpoints(tmp_path):
    """(A rerun then resumes from last.pt as after any failure: tests/test_train.py covers resuming.)"""
    port = _free_port()
    server = _start_server(tmp_path, port)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    cmd = [sys.executable, "-m", "difflab.cli", "part-b", "--profile", "tiny", "--set", 'stages=["time"]',
           "--set", "time_ddpm.epochs=8", "--set", "evaluation.enabled=false"]
    run = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while not list(tmp_path.glob(".difflab/checkpoints/*/last.pt")) and run.poll() is None:
            time.sleep(0.2)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        out, _ = run.communicate(timeout=120)  # MLflow's own defaults would hang here for 25 minutes
    finally:
        run.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
    assert run.returncode == 1, out[-2000:]
    errors = [line for line in out.splitlines() if line.startswith("difflab: error:")]
    assert len(errors) == 1 and "lost the MLflow tracking server" in errors[0] and "rerun" in errors[0]
    assert list(tmp_path.glob(".difflab/checkpoints/*/last.pt"))  # kept for the resume


def test_ui_hint_names_an_mlflow_the_shell_finds(tmp_path, monkeypatch):
    """`make run` leaves its venv off PATH: the run's last line names .venv/bin/mlflow, not a bare `mlflow` the
    shell cannot find; with the venv on PATH it says plain `mlflow`; `make ui` only beside a Makefile."""
    from difflab.tracking import query

    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "mlflow").write_text("#!/bin/sh\n")
    (venv_bin / "mlflow").chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(query.mlflow, "get_tracking_uri", lambda: "sqlite:///mlflow.db")
    assert query.mlflow_command() == ".venv/bin/mlflow"
    assert "run `.venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db` and open" in query.ui_hint()
    assert "make ui" not in query.ui_hint()
    (tmp_path / "Makefile").write_text("ui:\n")
    assert "(or `make ui`)" in query.ui_hint()
    monkeypatch.setenv("PATH", f"{venv_bin}:/usr/bin:/bin")
    assert query.mlflow_command() == "mlflow"
    monkeypatch.setattr(query.mlflow, "get_tracking_uri", lambda: "http://127.0.0.1:5000")
    assert query.ui_hint().startswith("open http://127.0.0.1:5000/#/experiments?")
