"""Part B: MNIST data -> single-step denoiser -> time-conditioned DDPM -> class-conditioned DDPM -> evaluation.

One flow run is one MLflow run; each stage is a nested run. Each stage is also a
flow of its own (`train_denoiser`, ...: one per entry of names.PART_B_STAGES, made by `_stage_flow`),
runnable alone with the same config.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from prefect import flow, get_run_logger

import flows  # noqa: F401 - the run-start doctor hook, also when Prefect loads this file by path
from difflab import names, tracking
from difflab.config import PartBConfig, describe_overrides, flatten_params, profile_overrides
from difflab.stages import STAGES
from difflab.train import device_name, pick_device
from tasks.data import prepare_data
from tasks.evaluation import evaluate
from tasks.promotion import promote_models
from tasks.refs import DataRef, StageRef
from tasks.sampling import sample_stage
from tasks.summary import publish_summary
from tasks.training import plan_part_b, train_stage


PROFILE_OVERRIDES_TAG = names.PROFILE_OVERRIDES_TAG


@flow(name="part_b", log_prints=True)
def part_b(config: PartBConfig | None = None, parent_run_id: str | None = None) -> dict:
    """Every configured stage in order, then the evaluation; returns run ids and the headline metrics."""
    config = config or PartBConfig()
    with _flow_run(config, "part_b", parent_run_id) as run_id:
        data = prepare_data(config.data, run_id)
        plan_part_b(config, data, run_id)  # levers and epochs resolved on this machine, one line per stage
        refs = {stage: run_stage(config, stage, data, run_id) for stage in config.stages}
        quality = {}
        if config.evaluation.enabled:
            quality = evaluate(config, data, refs, run_id)
            tracking.log_metrics({f"eval.{k}": v for k, v in quality.items()}, run_id=run_id)
        if parent_run_id is None:  # the top-level run: its row is the one the MLflow chart view shows
            tracking.copy_stepped_images({STAGES[s].name: r.run_id for s, r in refs.items()}, run_id)
            if view := tracking.save_training_view(run_id):
                print(f"Training snapshots side by side (MLflow UI, Views menu): {view}")
    promote_models(config, run_id, refs, quality)  # the champion alias moves only past the quality gate
    publish_summary("part_b", run_id)  # Prefect artifacts: MLflow link, headline numbers
    get_run_logger().info("Part B done: MLflow run %s — %s", run_id, tracking.ui_hint())
    return {"run_id": run_id, "data": data.model_dump(), "evaluation": quality,
            "stages": {s: r.model_dump() for s, r in refs.items()}, "headline": headline(refs, quality)}


def run_stage(config: PartBConfig, stage: str, data: DataRef, run_id: str) -> StageRef:
    """Train (or reuse) one stage, put its headline numbers on the flow's run, and sample it if it samples."""
    st = STAGES[stage]
    ref = train_stage(config, stage, data, run_id)
    tracking.log_metrics({f"{st.name}.{k}": v for k, v in ref.metrics.items()}, run_id=run_id)
    tracking.log_tags({f"{st.name}.run_id": ref.run_id, f"{st.name}.reused": ref.reused}, run_id)
    if st.generative:
        tracking.log_tags({f"{st.name}.sample_run_id": sample_stage(config, ref, run_id)}, run_id)
    return ref


def headline(refs: dict[str, StageRef], quality: dict[str, float]) -> dict[str, float]:
    """The numbers a runs table compares: each stage's metrics and the evaluation's, as logged on part_b."""
    out = {f"{STAGES[s].name}.{k}": v for s, r in refs.items() for k, v in r.metrics.items()}
    return {**out, **{f"eval.{k}": v for k, v in quality.items()}}


@contextlib.contextmanager
def _flow_run(config: PartBConfig, flow_name: str, parent_run_id: str | None) -> Iterator[str]:
    """The flow's MLflow run, tagged with its profile, what the run changed on top of it, and its device, with the
    whole config as params."""
    tracking.configure(config.tracking)
    with tracking.flow_run(flow_name, f"{flow_name}-{config.profile}", config.tracking.experiment, parent_run_id,
                           {"profile": config.profile, **profile_tags(config),
                            "device": device_name(pick_device(config.device))}) as run_id:
        tracking.log_params(flatten_params(config), run_id)
        yield run_id


def profile_tags(config: PartBConfig) -> dict[str, str]:
    """`profile_overrides`: every param that differs from the profile alone (`none` when it is the profile
    as is), and MLflow's run description saying the same, so a run named part_b-tiny that trained something
    else says so where the profile is shown."""
    changed = describe_overrides(profile_overrides(config))
    note = f"Profile {config.profile}" + ("" if changed == "none" else f", changed: {changed}")
    return {PROFILE_OVERRIDES_TAG: changed, "mlflow.note.content": note}


def _one_stage(config: PartBConfig | None, stage: str) -> StageRef:
    """A stage alone, under a run of its own named after it."""
    config = config or PartBConfig()
    with _flow_run(config, STAGES[stage].name, None) as run_id:
        return run_stage(config, stage, prepare_data(config.data, run_id), run_id)


def _stage_flow(stage: str):
    """The flow that trains `stage` alone: Prefect flow names.stage_flow(<run name>), function <that>_flow."""
    flow_name = names.stage_flow(names.PART_B_STAGES[stage])

    def train_one_stage(config: PartBConfig | None = None) -> StageRef:
        return _one_stage(config, stage)

    train_one_stage.__name__ = train_one_stage.__qualname__ = f"{flow_name}_flow"  # what an entrypoint names
    return flow(name=flow_name, log_prints=True)(train_one_stage)


STAGE_FLOWS = {stage: _stage_flow(stage) for stage in names.PART_B_STAGES}
"""One flow per stage, in training order, derived from names.PART_B_STAGES: train_denoiser_flow,
train_time_ddpm_flow, train_class_ddpm_flow (module attributes, for the CLI and for entrypoints)."""
globals().update({f.fn.__name__: f for f in STAGE_FLOWS.values()})


if __name__ == "__main__":
    from flows.script import run_command

    raise SystemExit(run_command("part-b"))
