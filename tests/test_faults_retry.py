"""Issue 8, item 9: tasks retry only what a second try can fix; user errors fail once."""

from __future__ import annotations

import mlflow
import pytest
from prefect import flow, task

from difflab.data import DataSourceError
from difflab.files import DiskFullError
from tasks.retry import retry_if_transient


@pytest.mark.parametrize("exc,attempts", [
    (ValueError("epochs must be > 0"), 1), (FileNotFoundError("no such checkpoint"), 1),
    (DataSourceError("idx_dir missing"), 1), (DiskFullError("/x/last.pt"), 1),
    (ConnectionError("server reset the connection"), 2), (RuntimeError("CUDA launch failure"), 2),
])
def test_only_transient_errors_are_retried(prefect_harness, exc, attempts):
    calls = []

    @task(retries=1, retry_delay_seconds=0, retry_condition_fn=retry_if_transient)
    def failing():
        calls.append(1)
        raise exc

    @flow
    def run():
        failing()

    state = run(return_state=True)
    assert state.is_failed() and len(calls) == attempts


def test_every_retried_task_checks_the_error():
    """Every Prefect task in tasks/ and flows/ that retries at all retries only transient errors."""
    import importlib
    import pkgutil

    from prefect import Task

    import flows
    import tasks

    retried = {}
    for package in (tasks, flows):
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            retried.update({t.name: t for t in vars(module).values() if isinstance(t, Task) and t.retries})
    assert {"download-data", "prepare-part-a", "evaluate", "sample", "train-stage"} <= set(retried)
    for name, t in retried.items():
        assert t.retry_condition_fn is retry_if_transient, name


def test_missing_idx_folder_fails_once(prefect_harness, mlflow_store, tmp_path, monkeypatch, capsys):
    import tasks.data
    from difflab.cli import main

    calls = []
    real = tasks.data.load_mnist
    monkeypatch.setattr(tasks.data, "load_mnist", lambda cfg: calls.append(1) or real(cfg))
    assert main(["part-b", "--profile", "tiny", "--set", "data.source=idx",
                 "--set", f"data.idx_dir={tmp_path / 'nope'}"]) == 2
    assert calls == [1]  # not retried
    assert "idx_dir" in capsys.readouterr().err.strip().splitlines()[-1]
    runs = mlflow.search_runs(experiment_names=["difflab"])
    assert list(runs.status) == ["FAILED"]
