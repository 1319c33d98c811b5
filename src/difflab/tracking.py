"""The one module that talks to MLflow.

Runs are addressed by id, never through a shared "active run" across threads:
each task opens its own run context by id, so Prefect may run tasks anywhere.
Default store: sqlite:///mlflow.db with artifacts under ./mlruns; MLFLOW_TRACKING_URI
(or the config) points everything at a tracking server instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from difflab.config import TrackingConfig

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_ARTIFACT_DIR = "mlruns"
CACHE_KEY_TAG = "difflab.cache_key"
STAGE_TAG = "difflab.stage"
REUSED_TAG = "difflab.reused_from"
ERROR_TAG = "difflab.error"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
"""What MLflow 3's UI calls a model-training experiment (the other kind is genai_development)."""
UI_MODEL_TRAINING = "workflowType=machine_learning"
"""MLflow >= 3.5's UI takes the experiment kind from its GenAI / Model training switch (this URL query or
the browser's last choice), not from the tag: links carry it so they open on runs, not the GenAI overview."""
_BATCH = 900  # MLflow's log_batch limit is 1000 metrics per call
_PARAM_MAX = 6000


def quiet_environment() -> None:
    """Turn off telemetry that otherwise prints tracebacks and locks sqlite."""
    for key, value in {"MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "DO_NOT_TRACK": "1", "GIT_PYTHON_REFRESH": "quiet",
                       "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}.items():
        os.environ.setdefault(key, value)


def tracking_uri(cfg: TrackingConfig | None = None) -> str:
    return (cfg.tracking_uri if cfg else None) or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def configure(cfg: TrackingConfig | None = None) -> str:
    quiet_environment()
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_id(name: str) -> str:
    """Get or create the experiment; local sqlite stores keep artifacts under ./mlruns."""
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            _mark_model_training(exp.experiment_id)
        return exp.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        location = (Path(DEFAULT_ARTIFACT_DIR).resolve() / "experiments" / name).as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except mlflow.exceptions.MlflowException:  # created concurrently by another process
        return mlflow.get_experiment_by_name(name).experiment_id


def _mark_model_training(exp_id: str) -> None:
    """MLflow 3's UI opens an unmarked experiment on its GenAI overview, where no run is shown."""
    with contextlib.suppress(mlflow.exceptions.MlflowException):
        MlflowClient().set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


@contextlib.contextmanager
def run(name: str, experiment: str, parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None,
        run_id: str | None = None) -> Iterator[str]:
    """Open (or reopen, with run_id) a run in this thread; it ends FAILED if the body raises."""
    if run_id is None:
        all_tags = {**_prefect_tags(), **{k: str(v) for k, v in (tags or {}).items()}}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run_id = MlflowClient().create_run(experiment_id(experiment), run_name=name, tags=all_tags).info.run_id
    active = mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None,
                              log_system_metrics=_system_metrics())
    try:
        yield run_id
    except BaseException as exc:
        with contextlib.suppress(Exception):
            mlflow.set_tag(ERROR_TAG, f"{type(exc).__name__}: {exc}"[:_PARAM_MAX])
        mlflow.end_run("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    else:
        active.__exit__(None, None, None)


def _system_metrics() -> bool:
    """MLflow's CPU/memory/disk/network (and, with pynvml, GPU) metrics for every run; needs psutil.
    MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false turns them off."""
    import importlib.util

    if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").lower() in ("false", "0"):
        return False
    import logging

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # not two lines per run in the log
    return importlib.util.find_spec("psutil") is not None


def _prefect_tags() -> dict[str, str]:
    """The Prefect flow run a run belongs to, so runs made on any worker can be matched back."""
    try:
        from prefect.runtime import flow_run

        return {"prefect.flow_run_id": str(flow_run.id)} if flow_run.id else {}
    except Exception:  # noqa: BLE001 - outside Prefect there is nothing to tag
        return {}


def log_params(params: Mapping[str, Any], run_id: str | None = None) -> None:
    rid = run_id or mlflow.active_run().info.run_id
    items = [Param(k, str(v)[:_PARAM_MAX]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        MlflowClient().log_batch(rid, params=items[i:i + 100])


def log_tags(tags: Mapping[str, Any], run_id: str | None = None) -> None:
    rid = run_id or mlflow.active_run().info.run_id
    MlflowClient().log_batch(rid, tags=[RunTag(k, str(v)[:_PARAM_MAX]) for k, v in tags.items()])


def log_metrics(metrics: Mapping[str, float], step: int | None = None, run_id: str | None = None) -> None:
    rid = run_id or mlflow.active_run().info.run_id
    now = _now_ms()
    items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
    for i in range(0, len(items), _BATCH):
        MlflowClient().log_batch(rid, metrics=items[i:i + _BATCH])


def log_series(key: str, values: Sequence[float], first_step: int, run_id: str | None = None) -> None:
    """Per-step values (e.g. every optimizer step's loss) in a few batched calls."""
    rid = run_id or mlflow.active_run().info.run_id
    now = _now_ms()
    items = [Metric(key, float(v), now, first_step + i) for i, v in enumerate(values)]
    for i in range(0, len(items), _BATCH):
        MlflowClient().log_batch(rid, metrics=items[i:i + _BATCH])


def log_image(image, name: str, step: int | None = None) -> None:
    """A stepped image (scrubbable by step in the MLflow UI) when step is given, else images/<name>.png."""
    if step is None:
        mlflow.log_image(image, artifact_file=f"images/{name}.png")
    else:
        mlflow.log_image(image, key=name, step=int(step), synchronous=True)


def log_file(path: str | Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path)


def log_text(text: str, artifact_file: str) -> None:
    mlflow.log_text(text, artifact_file)


def log_dict(data: dict, artifact_file: str) -> None:
    mlflow.log_dict(data, artifact_file)


def log_model(model, registered_name: str | None = None) -> str:
    """Log a torch model under `model` (fast: explicit pip requirements) and register it."""
    import logging

    import torch

    # pickle, not MLflow's default pt2 export: the UNets take (x, t, c) and need no tracing to reload.
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
    info = mlflow.pytorch.log_model(
        model.cpu(), name="model", registered_model_name=registered_name, serialization_format="pickle",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
    )
    return info.model_uri


def log_dataset(features, targets, name: str, digest: str, source: str, context: str) -> None:
    """An MLflow input dataset; the source is described by tags (a path string is ambiguous to MLflow)."""
    from mlflow.data.code_dataset_source import CodeDatasetSource

    dataset = mlflow.data.from_numpy(features, targets=targets, name=name, digest=digest,
                                     source=CodeDatasetSource(tags={"difflab.data_source": source}))
    mlflow.log_input(dataset, context=context)


def find_cached_run(experiment: str, cache_key: str) -> str | None:
    """The newest FINISHED run carrying this cache key, if any."""
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = MlflowClient().search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{CACHE_KEY_TAG}` = '{cache_key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return runs[0].info.run_id if runs else None


def get_run(run_id: str):
    return MlflowClient().get_run(run_id)


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


def latest_model_version(name: str):
    versions = MlflowClient().search_model_versions(f"name = '{name}'", order_by=["version_number DESC"],
                                                    max_results=1)
    return versions[0] if versions else None


def search_runs(experiments: Sequence[str] | None = None, filter_string: str = "", run_ids: Sequence[str] = ()):
    """Runs as a pandas DataFrame (mlflow.search_runs' layout), by experiment names, filter or ids."""
    import pandas as pd

    if run_ids:
        frames = [mlflow.search_runs(experiment_ids=[get_run(r).info.experiment_id],
                                     filter_string=f"attributes.run_id = '{r}'") for r in run_ids]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return mlflow.search_runs(experiment_names=list(experiments or []), filter_string=filter_string)


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


def ui_hint() -> str:
    uri = mlflow.get_tracking_uri()
    if uri.startswith("http"):
        return f"open {uri}/#/experiments?{UI_MODEL_TRAINING} to browse runs"
    return f"run `mlflow ui --backend-store-uri {uri}` and open http://127.0.0.1:5000/#/experiments?{UI_MODEL_TRAINING}"


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def code_version(modules: Sequence[str] | None = None) -> str:
    """A hash of library source files (all, or the named ones): a stage is retrained when its code changes."""
    h = hashlib.sha256()
    pkg = Path(__file__).resolve().parent
    paths = [pkg / m for m in modules] if modules else sorted(pkg.rglob("*.py"))
    for path in paths:
        h.update(path.relative_to(pkg).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


# ---------------------------------------------------------------------------------------------
# The write-up page (`difflab report`): a run tree's facts, numbers and images as plain data for
# difflab.report_page, which never talks to MLflow itself.

REPORT_FLOWS = ("pipeline", "part_b", "part_a")
REPORT_ARTIFACT = "report/report.html"
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


def report_data(run_id: str):
    """A pipeline, part_b or part_a run and every stage under it, with images, as `report_page.RunData`."""
    from difflab.report_page import RunData

    try:
        top = get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ValueError(f"run {run_id} not found in {mlflow.get_tracking_uri()}; give a run id from "
                         "`difflab pipeline`'s output or the MLflow UI (or set MLFLOW_TRACKING_URI)") from None
    flow = top.data.tags.get("flow", "")
    if flow not in REPORT_FLOWS:
        raise ValueError(f"run {run_id} is a {flow or 'stage'} run; give a pipeline, part_b or part_a run "
                         "(the write-up covers a whole flow run)")
    stages: dict = {}
    parts = [top] if flow != "pipeline" else [r for r in child_runs(run_id) if r.data.tags.get("flow") in REPORT_FLOWS]
    for part in parts:
        stages[part.data.tags["flow"]] = _stage_data(part, with_images=False)
        for child in child_runs(part.info.run_id):
            st = _stage_data(child)
            stages[st.name] = st
    return RunData(run_id=run_id, name=top.info.run_name, url=run_url(run_id), flow=flow, status=top.info.status,
                   start_ms=top.info.start_time, seconds=_seconds(top.info), tracking_uri=mlflow.get_tracking_uri(),
                   params=dict(top.data.params), metrics=dict(top.data.metrics), tags=_user_tags(top), stages=stages)


def _stage_data(run, with_images: bool = True):
    """One run as StageData; a `<stage> (reused)` run shows the original run's images and metrics."""
    from difflab.report_page import StageData

    tags = run.data.tags
    name = tags.get(STAGE_TAG) or tags.get("flow") or run.info.run_name.removesuffix(" (reused)")
    source_id = tags.get(REUSED_TAG)
    source = run
    if source_id:
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # the original deleted: no images then
            source = get_run(source_id)
    return StageData(name=name, run_id=run.info.run_id, url=run_url(run.info.run_id), status=run.info.status,
                     seconds=_seconds(run.info), reused_from=source_id,
                     reused_from_url=run_url(source_id) if source_id else "",
                     original_seconds=_seconds(source.info) if source is not run else None,
                     params={**source.data.params, **run.data.params},
                     metrics={**source.data.metrics, **run.data.metrics}, tags=_user_tags(run),
                     images=_images(source.info.run_id) if with_images else [])


def _images(run_id: str) -> list:
    """Every image under images/ of a run (stepped ones with their step; MLflow's compressed copies skipped)."""
    from difflab.report_page import MIME, PageImage

    files = [p for p in artifact_paths(run_id, "images")
             if Path(p).suffix.lower() in MIME and "+compressed" not in p and "%compressed" not in p]
    if not files:
        return []
    out = []
    with tempfile.TemporaryDirectory(prefix="difflab-report-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="images", dst_path=tmp))
        for path in files:
            stem, step = Path(path).stem, None
            for sep in _STEP_SEPARATORS:
                if sep in stem:
                    key, rest = stem.split(sep, 1)
                    stem, step = key.replace("~", "/"), int(rest.split(sep[0], 1)[0])
                    break
            raw = (local / Path(path).relative_to("images")).read_bytes()
            out.append(PageImage.from_bytes(stem, path, raw, step))
    return out


def _seconds(info) -> float | None:
    if not info.start_time:
        return None
    return ((info.end_time or _now_ms()) - info.start_time) / 1000


def _user_tags(run) -> dict[str, str]:
    return {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}


def log_report_page(run_id: str, page: str | Path) -> None:
    """The page as report/report.html of the run, whatever the local file is called."""
    import shutil

    folder, name = REPORT_ARTIFACT.rsplit("/", 1)
    with tempfile.TemporaryDirectory(prefix="difflab-report-") as tmp:
        staged = Path(tmp) / name
        shutil.copyfile(page, staged)
        MlflowClient().log_artifact(run_id, str(staged), folder)
