"""Part B: MNIST data -> single-step denoiser -> time-conditioned DDPM -> class-conditioned DDPM -> samples.

One flow run is one parent MLflow run; each stage is a nested run. Each stage is
also a flow of its own, runnable alone with the same config.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from prefect import flow, get_run_logger

from difflab import tracking
from difflab.config import PartBConfig, flatten_params
from difflab.data import MnistData
from tasks.data import prepare_data
from tasks.evaluation import evaluate
from tasks.promotion import promote_models
from tasks.refs import DataRef, StageRef
from tasks.sampling import sample_stage
from tasks.summary import publish_summary
from tasks.training import STAGE_NAMES, train_class_ddpm, train_denoiser, train_time_ddpm

TRAINERS = {"denoiser": train_denoiser, "time": train_time_ddpm, "class": train_class_ddpm}


def _log_data(data: DataRef, parent_run_id: str) -> None:
    mnist = MnistData.load(data.path)
    tracking.log_params({"data.source_used": data.source, "data.n_train": data.n_train, "data.n_test": data.n_test,
                         "data.checksum": data.checksum}, parent_run_id)
    tracking.log_tags({"data_source": data.source, "data_checksum": data.checksum}, parent_run_id)
    for split, images, labels in (("training", mnist.train_images, mnist.train_labels),
                                  ("evaluation", mnist.test_images, mnist.test_labels)):
        tracking.log_dataset(images.numpy(), labels.numpy(), f"mnist-{data.source}-{split}", data.checksum,
                             data.detail or data.source, split)


def _parent_tags(config: PartBConfig, flow_name: str) -> dict:
    from difflab.train import device_name, pick_device

    return {"flow": flow_name, "profile": config.profile, "git_commit": tracking.git_commit(),
            "device": device_name(pick_device(config.device))}


def run_stage(config: PartBConfig, stage: str, data: DataRef, parent_run_id: str) -> StageRef:
    ref = TRAINERS[stage](config, data, parent_run_id)
    name = STAGE_NAMES[stage]
    tracking.log_metrics({f"{name}.{k}": v for k, v in ref.metrics.items()}, run_id=parent_run_id)
    tracking.log_tags({f"{name}.run_id": ref.run_id, f"{name}.reused": ref.reused}, parent_run_id)
    if stage != "denoiser":
        sample_run = sample_stage(config, ref, parent_run_id)
        tracking.log_tags({f"{name}.sample_run_id": sample_run}, parent_run_id)
    return ref


@contextlib.contextmanager
def _parent_run(config: PartBConfig, flow_name: str, parent_run_id: str | None = None,
                data: DataRef | None = None) -> Iterator[tuple[str, DataRef]]:
    """The flow's own MLflow run, with the config as params and the data prepared and recorded."""
    tracking.configure(config.tracking)
    with tracking.run(f"{flow_name}-{config.profile}", config.tracking.experiment, parent_run_id,
                      tags=_parent_tags(config, flow_name)) as parent:
        tracking.log_params(flatten_params(config))
        data = data or prepare_data(config.data)
        _log_data(data, parent)
        yield parent, data


def _stage_flow(stage: str):
    @flow(name=f"train_{STAGE_NAMES[stage]}", log_prints=True)
    def stage_flow(config: PartBConfig | None = None, data: DataRef | None = None,
                   parent_run_id: str | None = None) -> StageRef:
        """One stage; inside part_b it logs under part_b's run, alone it opens a run of its own."""
        config = config or PartBConfig()
        if parent_run_id is not None and data is not None:
            return run_stage(config, stage, data, parent_run_id)
        with _parent_run(config, STAGE_NAMES[stage], parent_run_id, data) as (parent, data):
            return run_stage(config, stage, data, parent)

    return stage_flow


train_denoiser_flow = _stage_flow("denoiser")
train_time_ddpm_flow = _stage_flow("time")
train_class_ddpm_flow = _stage_flow("class")
STAGE_FLOWS = {"denoiser": train_denoiser_flow, "time": train_time_ddpm_flow, "class": train_class_ddpm_flow}


@flow(name="part_b", log_prints=True)
def part_b(config: PartBConfig | None = None, parent_run_id: str | None = None) -> dict:
    """Every Part B stage in order; returns the parent run id and each stage's run id."""
    config = config or PartBConfig()
    log = get_run_logger()
    with _parent_run(config, "part_b", parent_run_id) as (parent, data):
        refs = {stage: STAGE_FLOWS[stage](config, data, parent) for stage in config.stages}
        quality = {}
        if config.evaluation.enabled:
            quality = evaluate(config, data, refs, parent)
            tracking.log_metrics({f"eval.{k}": v for k, v in quality.items()}, run_id=parent)
    promote_models(config, parent, refs, quality)  # the champion alias moves only past the quality gate
    publish_summary("part_b", parent)  # Prefect artifacts: MLflow link, headline numbers
    log.info("Part B done: MLflow run %s — %s", parent, tracking.ui_hint())
    return {"run_id": parent, "data": data.model_dump(), "evaluation": quality,
            "stages": {s: r.model_dump() for s, r in refs.items()}}


if __name__ == "__main__":
    from difflab.cli import main

    raise SystemExit(main(["part-b", *__import__("sys").argv[1:]]))
