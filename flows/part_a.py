"""Part A: sampling and edits (SDEdit, inpainting, image-to-image, anagrams, hybrids) on a pluggable backend.

The default backend is the project's own class-conditioned MNIST model, so the
whole flow runs offline on a CPU; `backend=deepfloyd` uses DeepFloyd IF.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from difflab import tracking
from difflab.config import PartAConfig, PartBConfig, flatten_params
from flows.part_b import part_b
from tasks.edits import find_mnist_model, prepare_part_a, run_section
from tasks.summary import publish_summary


@flow(name="part_a", log_prints=True)
def part_a(config: PartAConfig | None = None, parent_run_id: str | None = None) -> dict:
    """Every configured section, each a nested MLflow run under one part_a run."""
    config = config or PartAConfig()
    tracking.configure(config.tracking)
    with tracking.flow_run("part_a", f"part_a-{config.backend}", config.tracking.experiment, parent_run_id,
                           {"backend": config.backend}) as run:
        tracking.log_params(flatten_params(config))
        model = mnist_model(config) if config.backend == "mnist" else None
        inputs = prepare_part_a(config, model)
        tracking.log_params({"model.resolved": inputs.model, "model.run_id": inputs.model_run_id})
        sections = {s: run_section(config, s, inputs, run) for s in config.sections}
    publish_summary("part_a", run)
    get_run_logger().info("Part A done: MLflow run %s — %s", run, tracking.ui_hint())
    return {"run_id": run, "inputs": inputs.model_dump(), "sections": sections}


def mnist_model(config: PartAConfig) -> tuple[str, str | None] | None:
    """The class-conditioned model to edit with; with train_if_missing and none yet, train one (quick profile)."""
    found = find_mnist_model(config)
    if found is None and config.mnist.train_if_missing:
        get_run_logger().info("no MNIST model yet: training one with the quick profile")
        stage = part_b(config=PartBConfig(profile="quick", stages=["class"], tracking=config.tracking))["stages"]["class"]
        found = stage["checkpoint"], stage["run_id"]
    return found


if __name__ == "__main__":
    from flows.script import run_command

    raise SystemExit(run_command("part-a"))
