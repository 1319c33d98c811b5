"""The main job: Part B, then Part A on the class-conditioned model Part B just trained."""

from __future__ import annotations

from prefect import flow, get_run_logger

from difflab import tracking
from difflab.config import PipelineConfig, flatten_params
from difflab.stages import STAGES
from flows.part_a import part_a
from flows.part_b import part_b, profile_tags
from tasks.page import log_report
from tasks.summary import publish_summary


@flow(name="pipeline", log_prints=True)
def pipeline(config: PipelineConfig | None = None) -> dict:
    config = config or PipelineConfig()
    tracking.configure(config.part_b.tracking)
    with tracking.flow_run("pipeline", f"pipeline-{config.part_b.profile}", config.part_b.tracking.experiment,
                           tags={"profile": config.part_b.profile, **profile_tags(config.part_b)}) as run:
        # the settings that tell pipeline runs apart, flat (part_b.class_ddpm.guidance, part_a.i_start, ...)
        shorthands = ("profile", "force", "device")  # copied into part_b.*
        tracking.log_params({k: v for k, v in flatten_params(config).items() if k not in shorthands}, run)
        b = part_b(config=config.part_b, parent_run_id=run)
        tracking.log_metrics(b["headline"], run_id=run)  # so the runs table compares `make run`s unexpanded
        # ... and the chart view's image charts show their stepped samples (the stage runs are folded under it)
        tracking.copy_stepped_images({STAGES[k].name: ref["run_id"] for k, ref in b["stages"].items()}, run)
        if view := tracking.save_training_view(run):
            print(f"Training snapshots side by side (MLflow UI, Views menu): {view}")
        result = {"run_id": run, "part_b": b}
        editable = [ref for key, ref in b["stages"].items() if STAGES[key].edits_backend]
        if config.run_part_a and editable:
            a_cfg = config.part_a.model_copy(update={"backend": "mnist", "mnist": config.part_a.mnist.model_copy(
                update={"checkpoint": editable[0]["checkpoint"], "data": config.part_b.data})})
            result["part_a"] = part_a(config=a_cfg, parent_run_id=run)
    result["report"] = _report(run, config)  # once the run has finished, so the page shows its final state
    publish_summary("pipeline", run, {"part_b": b["run_id"], "part_a": result.get("part_a", {}).get("run_id")})
    return result


def _report(run_id: str, config: PipelineConfig) -> str | None:
    """The write-up page, logged to this run; a failure here is reported, not a failed pipeline."""
    try:
        return log_report(run_id, config.part_b.tracking)
    except Exception as exc:  # noqa: BLE001 - the trained models and every artifact are already logged
        msg = f"{type(exc).__name__}: {exc}"
        tracking.log_tags({"difflab.report_error": msg}, run_id)
        get_run_logger().warning("no write-up page (%s); retry with `difflab report %s`", msg, run_id)
        return None


if __name__ == "__main__":
    from flows.script import run_command

    raise SystemExit(run_command("pipeline"))
