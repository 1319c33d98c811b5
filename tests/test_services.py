"""Services and stores as users meet them: a stopped Prefect server still named by PREFECT_API_URL, an
MLflow filter MLflow refuses, a store another program holds locked, a CLI killed with its Prefect server."""

from __future__ import annotations

import gzip
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from prefect import flow, task

from difflab import tracking
from difflab.config import TrackingConfig
from difflab.errors import is_retryable, is_user_error
from tasks.retry import retry_if_transient


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(args, cwd, **env):
    return subprocess.run([sys.executable, "-m", "difflab.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PREFECT_HOME": str(cwd / "prefect"), **env})


def test_a_stopped_prefect_server_is_one_line_naming_prefect_api_url(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/api"
    done = _cli(["part-a", "--set", 'sections=["sdedit"]'], tmp_path, PREFECT_API_URL=url,
                MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith(f"difflab: error: Prefect API PREFECT_API_URL={url} is not reachable")
    assert "unset PREFECT_API_URL" in lines[0]
    assert not (tmp_path / "mlflow.db").exists()  # stopped before anything was written


@pytest.mark.parametrize("exc,user", [
    (gzip.BadGzipFile("Not a gzipped file (b'\\x00\\x00')"), True),
    (MlflowException("Expected a quoted string value", error_code=INVALID_PARAMETER_VALUE), True),
    (MlflowException("internal", error_code=INTERNAL_ERROR), False),
    (ConnectionError("reset"), False),
])
def test_user_errors_are_told_from_transient_ones(exc, user):
    assert is_user_error(exc) is user and is_retryable(exc) is not user


def test_an_invalid_parameter_from_mlflow_fails_once(prefect_harness):
    calls = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_if_transient)
    def failing():
        calls.append(1)
        raise MlflowException("bad value for max_results", error_code=INVALID_PARAMETER_VALUE)

    @flow
    def run():
        failing()

    assert run(return_state=True).is_failed() and len(calls) == 1


def test_compare_with_an_unquoted_filter_value_names_filter_and_is_not_retried(prefect_harness, mlflow_store,
                                                                                 capsys, monkeypatch):
    import mlflow

    import flows.compare
    from difflab.cli import main

    mlflow.create_experiment("difflab")
    calls = []
    real = tracking.search_runs
    monkeypatch.setattr(flows.compare.tracking, "search_runs", lambda *a, **k: calls.append(1) or real(*a, **k))
    rc = main(["compare", "--set", "filter=params.class_ddpm.guidance = 5.0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(calls) == 1
    assert err[-1].startswith("difflab: error: filter 'params.class_ddpm.guidance = 5.0' is not a valid MLflow "
                              "search filter (Expected a quoted string value")
    assert "quote them" in err[-1]


def test_a_locked_store_is_waited_on_then_named_with_its_holder(tmp_path):
    db = tmp_path / "mlflow.db"
    holder = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys, time\n"
                               f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
                               "c.execute('create table t (x)'); c.execute('BEGIN EXCLUSIVE')\n"
                               "print('locked', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        cfg = TrackingConfig(tracking_uri=f"sqlite:///{db}", store_lock_timeout_s=1.0)
        started = time.monotonic()
        with pytest.raises(tracking.StoreLocked) as e:
            tracking.probe(cfg)
        assert 1.0 <= time.monotonic() - started < 30
        line = str(e.value)
        assert "\n" not in line and str(db) in line and f"locked by pid {holder.pid} (" in line
        assert "waited 1 s" in line and "tracking.store_lock_timeout_s" in line
    finally:
        holder.kill()
        holder.wait()
    tracking.probe(cfg)  # free again: passes


def test_a_killed_cli_run_takes_its_prefect_server_with_it(tmp_path):
    """The orphan found after `make test`: a CLI run killed (SIGKILL) while its temporary Prefect server ran."""
    proc = subprocess.Popen([sys.executable, "-m", "difflab.cli", "part-b", "--profile", "tiny"], cwd=tmp_path,
                            env={**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"),
                                 "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    deadline = time.monotonic() + 180
    while server is None and proc.poll() is None and time.monotonic() < deadline:
        kids = psutil.Process(proc.pid).children(recursive=True)
        server = next((k for k in kids if "prefect.server.api.server:create_app" in " ".join(k.cmdline())), None)
        time.sleep(0.2)
    assert server is not None, "the CLI never started its temporary Prefect server"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        server.wait(timeout=20)  # re-parented to this test process (a subreaper), so it can be waited on
    except psutil.TimeoutExpired:
        server.kill()
        pytest.fail("the killed CLI's Prefect server was left running")
