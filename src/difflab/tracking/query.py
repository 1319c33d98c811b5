"""Reading the store: runs by id, search or cache key, their artifacts, metric histories, and the URLs a
person opens them at."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import mlflow
from mlflow.tracking import MlflowClient

from difflab.names import CACHE_KEY_TAG, REUSED_TAG
from difflab.tracking.store import DEFAULT_TRACKING_URI, UI_MODEL_TRAINING


def find_cached_run(experiment: str, cache_key: str) -> str | None:
    """The newest FINISHED run that trained with this cache key and holds its artifacts.

    A `(reused)` run only points at such a run (tag difflab.reused_from); older versions copied the
    cache key into it, so a pointer is followed to the run it names rather than returned.
    """
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = MlflowClient().search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{CACHE_KEY_TAG}` = '{cache_key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=50,
    )
    for r in runs:
        original = r.data.tags.get(REUSED_TAG)
        if original is None:
            return r.info.run_id
        with contextlib.suppress(Exception):
            if get_run(original).info.status == "FINISHED":
                return original
    return None


def get_run(run_id: str):
    return MlflowClient().get_run(run_id)


def find_run(run_id: str):
    """The run, or None when the store cannot give it (no run with this id: MLflow's error, not a dead server's)."""
    try:
        return get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None


def download(run_id: str, artifact_path: str, dst: str | Path | None = None) -> Path:
    dst = Path(dst or tempfile.mkdtemp(prefix="difflab-"))
    dst.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dst)))


def artifact_paths(run_id: str, path: str | None = None) -> list[str]:
    """Every artifact file of a run (recursively), as paths relative to its artifact root."""
    out: list[str] = []
    for a in MlflowClient().list_artifacts(run_id, path):
        out += artifact_paths(run_id, a.path) if a.is_dir else [a.path]
    return out


def search_runs(experiments: Sequence[str] | None = None, filter_string: str = "", run_ids: Sequence[str] = ()):
    """Runs as a pandas DataFrame (mlflow.search_runs' layout), by experiment names, filter or ids."""
    import pandas as pd

    if run_ids:
        frames = [mlflow.search_runs(experiment_ids=[get_run(r).info.experiment_id],
                                     filter_string=f"attributes.run_id = '{r}'") for r in run_ids]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    try:
        return mlflow.search_runs(experiment_names=list(experiments or []), filter_string=filter_string)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code != "INVALID_PARAMETER_VALUE" or not filter_string:
            raise
        first = str(exc.message).splitlines()[0] if str(exc.message) else exc.error_code
        raise ValueError(f"filter {filter_string!r} is not a valid MLflow search filter ({first}); fix --set "
                         "filter=... (param and tag values are strings: quote them, e.g. "
                         "params.class_ddpm.guidance = '5.0')") from None


def child_runs(run_id: str) -> list:
    """The runs nested directly under run_id."""
    exp = get_run(run_id).info.experiment_id
    return MlflowClient().search_runs([exp], f"tags.`mlflow.parentRunId` = '{run_id}'")


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key)]


def run_url(run_id: str) -> str:
    """Where a person opens the run; for a local store, after `mlflow ui`."""
    r = get_run(run_id)
    uri = mlflow.get_tracking_uri()
    base = uri.rstrip("/") if uri.startswith("http") else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{r.info.experiment_id}/runs/{run_id}?{UI_MODEL_TRAINING}"


def artifact_url(run_id: str, path: str) -> str:
    """Where the MLflow UI shows one artifact of a run (e.g. the report page)."""
    return run_url(run_id).replace(f"?{UI_MODEL_TRAINING}", f"/artifacts/{path}?{UI_MODEL_TRAINING}")


def mlflow_command() -> str:
    """How a shell calls this Python's `mlflow`: `mlflow` where PATH finds this one (an activated venv), else
    its path (`.venv/bin/mlflow` after `make run`, whose venv is not on PATH)."""
    here = Path(sys.executable).parent / "mlflow"
    found = shutil.which("mlflow")
    if not here.exists() or (found and Path(found).resolve() == here.resolve()):
        return "mlflow"
    try:
        return str(here.relative_to(Path.cwd()))
    except ValueError:
        return str(here)


def ui_hint() -> str:
    """Where to browse the runs: the server's address, or the command that serves a local store."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith("http"):
        return f"open {uri}/#/experiments?{UI_MODEL_TRAINING} to browse runs"
    # the Makefile's `ui` target serves the default store, relative to the repository
    make = " (or `make ui`)" if uri == DEFAULT_TRACKING_URI and Path("Makefile").exists() else ""
    return (f"run `{mlflow_command()} ui --backend-store-uri {uri}`{make} and open "
            f"http://127.0.0.1:5000/#/experiments?{UI_MODEL_TRAINING}")


_STEP_SEPARATORS = ("+step+", "%step%")
"""MLflow 3 names a stepped image images/<key>+step+<n>+timestamp+<ms>+<uuid>.png (older: % for +)."""


def newest_run(experiment: str, flow: str = "pipeline") -> str | None:
    """The newest finished run of a flow (tags.flow) in the experiment, if any."""
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = MlflowClient().search_runs([exp.experiment_id],
                                      f"tags.flow = '{flow}' and attributes.status = 'FINISHED'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def split_stepped(stem: str) -> tuple[str, int | None]:
    """(key, step) of a stepped image's file stem; (stem, None) for any other image."""
    for sep in _STEP_SEPARATORS:
        if sep in stem:
            key, rest = stem.split(sep, 1)
            return key.replace("~", "/"), int(rest.split(sep[0], 1)[0])
    return stem, None




def running_runs(experiments: Sequence[str] | None = None, max_results: int = 5000) -> list:
    """Runs still RUNNING (MLflow run entities) in these experiments (None or empty: every experiment)."""
    client = MlflowClient()
    if experiments:
        exps = [e for e in (mlflow.get_experiment_by_name(n) for n in experiments) if e is not None]
    else:
        exps = client.search_experiments()
    if not exps:
        return []
    return client.search_runs([e.experiment_id for e in exps], "attributes.status = 'RUNNING'",
                              max_results=max_results)
