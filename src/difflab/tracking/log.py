"""The `log_*` calls: params, tags, metrics, series, images, files, datasets and the write-up page of a run
(the active run, or one given by id), batched under MLflow's limits."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from difflab.names import REPORT_ARTIFACT
from difflab.tracking.query import artifact_paths, get_run, split_stepped
from difflab.tracking.store import _BATCH, _PARAM_MAX, UI_MODEL_TRAINING, _now_ms


def log_params(params: Mapping[str, Any], run_id: str | None = None) -> None:
    rid = run_id or mlflow.active_run().info.run_id
    items = [Param(k, str(v)[:_PARAM_MAX]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        MlflowClient().log_batch(rid, params=items[i:i + 100])


def log_tags(tags: Mapping[str, Any], run_id: str | None = None) -> None:
    rid = run_id or mlflow.active_run().info.run_id
    MlflowClient().log_batch(rid, tags=[RunTag(k, str(v)[:_PARAM_MAX]) for k, v in tags.items()])


def log_metrics(metrics: Mapping[str, float], step: int | None = None, run_id: str | None = None,
                model_id: str | None = None) -> None:
    """Metrics of a run; with model_id also linked to that logged model (its Models-tab columns)."""
    rid = run_id or mlflow.active_run().info.run_id
    now = _now_ms()
    items = [Metric(k, float(v), now, step or 0, model_id=model_id) for k, v in metrics.items()]
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

# ---------------------------------------------------------------------------------------------
# Models a user can call: every Part B checkpoint logged as an MLflow pyfunc model whose code is this


def log_dataset(features, targets, name: str, digest: str, source: str, context: str,
                run_id: str | None = None) -> None:
    """An MLflow input dataset; the source is described by tags (a path string is ambiguous to MLflow)."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    dataset = mlflow.data.from_numpy(features, targets=targets, name=name, digest=digest,
                                     source=CodeDatasetSource(tags={"difflab.data_source": source}))
    rid = run_id or mlflow.active_run().info.run_id
    MlflowClient().log_inputs(rid, [DatasetInput(dataset._to_mlflow_entity(),
                                                 [InputTag(MLFLOW_DATASET_CONTEXT, context)])])


def copy_stepped_images(sources: Mapping[str, str], to_run_id: str) -> int:
    """Log every stepped image (step = epoch) of each source run again on to_run_id, as `<name>.<key>` at the same
    step; returns how many. The MLflow UI's chart view shows the top-level runs of an experiment (children stay
    folded under them), so the stage runs' images reach its image charts, and compare across runs, only from there.
    sources: name -> run id (a stage's own run, or the original run of a reused one)."""
    from PIL import Image

    count = 0
    for name, run_id in sources.items():
        files = [p for p in artifact_paths(run_id, "images") if p.endswith(".png") and "compressed" not in p
                 and split_stepped(Path(p).stem)[1] is not None]
        if not files:
            continue
        with tempfile.TemporaryDirectory(prefix="difflab-images-") as tmp:
            local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="images", dst_path=tmp))
            for path in sorted(files):
                key, step = split_stepped(Path(path).stem)
                with Image.open(local / Path(path).relative_to("images")) as im:
                    MlflowClient().log_image(to_run_id, im.copy(), key=f"{name}.{key}", step=step, synchronous=True)
                count += 1
    return count


def save_training_view(run_id: str) -> str | None:
    """Write (or refresh) the experiment's saved view of the training snapshots (`difflab.ui_views`): the runs
    page's Views menu lists it, its image grids open on the last epoch this top-level run carries of each stage;
    returns the address that opens it in the chart view, or None (with a warning) when the server refuses the
    experiment tag: a convenience view never fails a run whose results are recorded."""
    import logging

    from difflab import ui_views

    steps: dict[str, int] = {}
    for path in artifact_paths(run_id, "images"):
        key, step = split_stepped(Path(path).stem.removesuffix("+compressed"))
        if step is not None:
            steps[key] = max(step, steps.get(key, step))
    exp_id = get_run(run_id).info.experiment_id
    try:
        MlflowClient().set_experiment_tag(exp_id, *ui_views.saved_view_tag(ui_views.training_view_state(steps),
                                                                            _now_ms()))
    except mlflow.exceptions.MlflowException as exc:
        logging.getLogger(__name__).warning("the MLflow UI's training view was not saved (%s); the runs and "
                                            "their images are recorded", str(exc).splitlines()[0])
        return None
    uri = mlflow.get_tracking_uri()
    return ui_views.view_url(uri if uri.startswith("http") else "http://127.0.0.1:5000", exp_id, UI_MODEL_TRAINING)


def log_report_page(run_id: str, page: str | Path) -> None:
    """The page as report/report.html of the run, whatever the local file is called."""
    import shutil

    folder, name = REPORT_ARTIFACT.rsplit("/", 1)
    with tempfile.TemporaryDirectory(prefix="difflab-report-") as tmp:
        staged = Path(tmp) / name
        shutil.copyfile(page, staged)
        MlflowClient().log_artifact(run_id, str(staged), folder)
