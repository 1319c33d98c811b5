"""Models: torch models and Part B checkpoints logged as MLflow models (the pyfunc MLflow serves), the
metrics linked to a logged model, and the registry (versions, tags, aliases).

Every Part B checkpoint is logged as an MLflow pyfunc model whose code is this package (difflab.generator
does the work; this adapter is MLflow's side: tables in and out, and a bad request as MLflow's
INVALID_PARAMETER_VALUE, which `mlflow models serve` answers with HTTP 400)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import mlflow
from mlflow.tracking import MlflowClient

from difflab.tracking.log import log_metrics
from difflab.tracking.query import get_run
from difflab.tracking.store import _PARAM_MAX

# package (difflab.generator does the work; this adapter is MLflow's side: tables in and out, and a bad
# request as MLflow's INVALID_PARAMETER_VALUE, which `mlflow models serve` answers with HTTP 400).

PYFUNC_LOADER = "difflab.tracking"
"""The loader module MLflow imports from the model's own code/ folder: its `_load_pyfunc(data_path)`."""
MODEL_METADATA_KEY = "difflab"
"""MLmodel metadata: {kind, stage, conditional, num_timesteps, guidance} for clients (`difflab generate`)."""


class ModelNotFound(ValueError):
    """A models:/ URI (name, version or alias) that the registry does not hold; the message says what to do."""


def _pyfunc_signature(model):
    """Request/response tables for a DDPM (difflab.generator.REQUEST_FIELDS / RESPONSE_FIELDS); tensors of
    (N, 28, 28) float32 in and out for the denoiser."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema, TensorSpec

    from difflab import generator

    if model.kind == generator.DENOISER_KIND:
        spec = Schema([TensorSpec(np.dtype(np.float32), generator.DENOISER_SHAPE)])
        return ModelSignature(spec, spec)

    def nested(dtype: str, depth: int):
        return dtype if depth == 0 else Array(nested(dtype, depth - 1))

    inputs = Schema([ColSpec(dtype, name, required=(required and model.conditional) or name == "count")
                     for name, dtype, required in generator.REQUEST_FIELDS])
    outputs = Schema([ColSpec(nested(dtype, depth), name) for name, dtype, depth in generator.RESPONSE_FIELDS])
    return ModelSignature(inputs, outputs)


def _pyfunc_example(model):
    import numpy as np
    import pandas as pd

    from difflab.generator import DENOISER_KIND, DENOISER_SHAPE, UNCONDITIONAL

    if model.kind == DENOISER_KIND:
        return np.zeros((1, *DENOISER_SHAPE[1:]), np.float32)
    if model.conditional:
        return pd.DataFrame([{"digit": 7, "count": 4, "guidance": model.default_guidance, "seed": 0,
                              "trajectory_steps": 0}])
    return pd.DataFrame([{"digit": UNCONDITIONAL, "count": 4, "seed": 0, "trajectory_steps": 0}])


def _pip_requirements() -> list[str]:
    import numpy
    import pandas
    import pydantic
    import torch

    return [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"pydantic=={pydantic.VERSION}", f"numpy=={numpy.__version__}", f"pandas=={pandas.__version__}"]


def log_generator(checkpoint: str | Path, name: str, step: int, registered_name: str | None = None,
                  metrics: Mapping[str, float] | None = None, params: Mapping[str, Any] | None = None,
                  tags: Mapping[str, Any] | None = None) -> str:
    """Log a Part B checkpoint to the active run as a pyfunc model called `name` at `step` (the epoch), with
    its signature, an input example, the checkpoint as data and this package as code (it loads where difflab
    is not installed); link `metrics` to it, register it as `registered_name` if given. Returns the model id."""
    import logging

    from difflab import generator

    model = generator.load(checkpoint, "cpu")
    meta = {"kind": model.kind, "stage": model.extra.get("stage")}
    if model.kind == generator.GENERATOR_KIND:
        meta.update(conditional=model.conditional, num_timesteps=model.num_timesteps,
                    guidance=model.default_guidance)
    logging.getLogger("mlflow.models.model").setLevel(logging.ERROR)  # no "model logged" chatter per epoch
    info = mlflow.pyfunc.log_model(
        name=name, loader_module=PYFUNC_LOADER, data_path=str(checkpoint),
        code_paths=[str(Path(__file__).resolve().parents[1])], signature=_pyfunc_signature(model),
        input_example=_pyfunc_example(model), pip_requirements=_pip_requirements(),
        registered_model_name=registered_name, metadata={MODEL_METADATA_KEY: meta}, step=int(step),
        params={k: str(v)[:_PARAM_MAX] for k, v in (params or {}).items()} or None,
        tags={k: str(v) for k, v in (tags or {}).items()} or None, model_type=model.kind)
    if metrics:
        log_metrics(metrics, step=step, model_id=info.model_id)
    return info.model_id


def link_model_metrics(model_id: str, metrics: Mapping[str, float], run_id: str | None = None) -> None:
    """Metrics measured on a logged model by another run (the evaluation): logged to that run, linked to the
    model (its Models-tab columns, `search_logged_models(order_by=...)`), and the model recorded as the
    run's input."""
    from mlflow.entities import LoggedModelInput

    rid = run_id or mlflow.active_run().info.run_id
    MlflowClient().log_inputs(rid, models=[LoggedModelInput(model_id)])
    log_metrics(metrics, run_id=rid, model_id=model_id)


def register_logged_model(model_id: str, name: str) -> str:
    """Register a logged model as a new version of `name`; returns the version."""
    return mlflow.register_model(f"models:/{model_id}", name).version


def logged_model(model_id: str):
    return mlflow.get_logged_model(model_id)


def logged_model_metrics(model_id: str) -> dict[str, float]:
    """The newest value of every metric linked to a logged model (the training's and the evaluation's)."""
    latest: dict[str, Any] = {}
    for m in logged_model(model_id).metrics or []:
        if m.key not in latest or (m.timestamp, m.step) >= (latest[m.key].timestamp, latest[m.key].step):
            latest[m.key] = m
    return {k: m.value for k, m in latest.items()}


def find_logged_model(run_id: str, name: str) -> str | None:
    """The id of the model called `name` that run_id logged (the newest, if several), or None."""
    run = get_run(run_id)
    found = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
                                        order_by=[{"field_name": "creation_timestamp", "ascending": False}])
    return found[0].model_id if found else None


def load_pyfunc(uri: str):
    """mlflow.pyfunc.load_model(uri); a models:/ name, version or alias the registry lacks is ModelNotFound."""
    try:
        return mlflow.pyfunc.load_model(uri)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or "not found" in str(exc):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            alias = ("; an alias such as @champion is set only when a run passes the quality gate (tiny runs never "
                     "promote; the run's 'model promotion' line says why)") if "@" in uri else ""
            raise ModelNotFound(f"{uri} is not in the registry at {mlflow.get_registry_uri()} ({first}); list "
                                "the models and aliases in the MLflow UI's Models page or give another "
                                f"version, e.g. models:/difflab-class-ddpm/latest{alias}") from None
        raise


class _ServedModel:
    """What MLflow calls after `_load_pyfunc`: a request table in, a table of images out (a DDPM), or noisy
    digits in and clean ones out (the denoiser). An InvalidRequest becomes MLflow's INVALID_PARAMETER_VALUE,
    whose message names the row and field; `mlflow models serve` answers it with HTTP 400 and keeps serving."""

    def __init__(self, model):
        self.model = model

    def get_raw_model(self):
        """The difflab.generator object (its `.model` is the torch network)."""
        return self.model

    def predict(self, model_input, params=None):
        import numpy as np
        import pandas as pd

        from difflab.generator import DENOISER_KIND, RESPONSE_FIELDS, InvalidRequest

        try:
            if self.model.kind == DENOISER_KIND:
                data = model_input.to_numpy() if isinstance(model_input, pd.DataFrame) else model_input
                return self.model.denoise(np.asarray(data))
            if isinstance(model_input, pd.DataFrame):
                rows = model_input.to_dict("records")
            elif isinstance(model_input, Mapping):
                rows = [dict(model_input)]
            else:
                rows = list(model_input)
            answers = self.model.generate(rows)
        except InvalidRequest as exc:
            raise mlflow.exceptions.MlflowException.invalid_parameter_value(str(exc)) from None
        return pd.DataFrame([a.row() for a in answers], columns=[name for name, _, _ in RESPONSE_FIELDS])


def _load_pyfunc(data_path: str) -> _ServedModel:
    """MLflow's entry point for a logged Part B model (loader_module = PYFUNC_LOADER)."""
    from difflab import generator

    return _ServedModel(generator.load(data_path))


def latest_model_version(name: str):
    versions = MlflowClient().search_model_versions(f"name = '{name}'", order_by=["version_number DESC"],
                                                    max_results=1)
    return versions[0] if versions else None


def model_versions_of_run(name: str, run_id: str) -> list:
    """Versions of a registered model that a run logged (newest first)."""
    return MlflowClient().search_model_versions(f"name = '{name}' and run_id = '{run_id}'",
                                                order_by=["version_number DESC"])


def tag_model_version(name: str, version: str, tags: Mapping[str, Any]) -> None:
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value)[:_PARAM_MAX])


def set_model_alias(name: str, alias: str, version: str) -> None:
    MlflowClient().set_registered_model_alias(name, alias, version)


def model_version_by_alias(name: str, alias: str):
    """The version models:/<name>@<alias> points at, or None (no such model or alias)."""
    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None

