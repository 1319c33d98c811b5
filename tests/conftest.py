"""Shared fixtures: one Prefect test harness per session, and a fresh MLflow store per test."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import difflab  # noqa: E402,F401  (telemetry switches and OpenMP waiting, before torch loads)
import torch  # noqa: E402
# Prefect binds its console log handler to sys.stderr when prefect.main is first imported: import it
# now, while stderr is the session's, not a capsys buffer that a test closes (flows of later tests
# would log into that closed file and recurse until RecursionError).
import prefect.main  # noqa: E402,F401

# The suite's models are tiny and the CI machine has two cores shared with a Prefect server:
# one thread avoids OpenMP threads spinning against each other (10x slower otherwise).
torch.set_num_threads(1)


LEAK_GRACE_S = 15.0
"""How long processes started by the tests get to exit after the last test before they count as left running."""


@pytest.fixture(scope="session", autouse=True)
def nothing_left_running():
    """Fail the suite if a process a test started (a Prefect server, a CLI run, a stack service) is still
    alive after the last test. The pytest process becomes a child subreaper (Linux), so a server orphaned
    by a killed CLI run is re-parented here and found, instead of living on under init."""
    import psutil

    from difflab.procs import become_subreaper

    become_subreaper()
    yield
    # The temporary Prefect servers this process owns are stopped at exit by Prefect's atexit hook; stop
    # them now, as the owner would, so that only strays remain.
    from prefect.server.api.server import SubprocessASGIServer

    for server in list(SubprocessASGIServer._instances.values()):
        server.stop()
    me = psutil.Process()
    _, alive = psutil.wait_procs(me.children(recursive=True), timeout=LEAK_GRACE_S)
    alive = [p for p in alive if _running(p)]
    described = [f"pid {p.pid} {_cmdline(p)}" for p in alive]
    for p in alive:  # stop them anyway: a leak must not outlive the suite either
        with _gone(psutil):
            p.kill()
    _reap_zombies()
    if alive:
        pytest.fail("left running after the tests (their owner did not stop them): "
                    + "; ".join(described), pytrace=False)


def _running(p) -> bool:
    import psutil

    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _cmdline(p) -> str:
    try:
        return " ".join(p.cmdline())[:200]
    except Exception:  # noqa: BLE001
        return "?"


def _gone(psutil):
    import contextlib

    return contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied)


def _reap_zombies() -> None:
    """Collect the exit status of adopted orphans (this process is their subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


@pytest.fixture(scope="session")
def prefect_harness():
    """A throwaway Prefect API for flow tests (about 7 s to start, so only once); its server dies with
    the test process however that ends (SIGKILL included)."""
    from prefect.testing.utilities import prefect_test_harness

    from difflab.procs import children_die_with_parent

    with children_die_with_parent():
        harness = prefect_test_harness(server_startup_timeout=120)
        harness.__enter__()
    try:
        yield
    finally:
        harness.__exit__(None, None, None)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """Run in a temp dir with its own sqlite store and ./mlruns, as a user's project folder would be."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()
