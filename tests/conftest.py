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


@pytest.fixture(scope="session")
def prefect_harness():
    """A throwaway Prefect API for flow tests (about 7 s to start, so only once)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


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
