"""Part A: sampling and edits (SDEdit, inpainting, image-to-image, anagrams, hybrids) on a pluggable backend.

The default backend is the project's own class-conditioned MNIST model, so the
whole flow runs offline on a CPU; `backend=deepfloyd` uses DeepFloyd IF.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from difflab import tracking
from difflab.config import PartAConfig, flatten_params
from tasks.edits import prepare_part_a, run_section
from tasks.summary import publish_summary


@flow(name="part_a", log_prints=True)
def part_a(config: PartAConfig | None = None, parent_run_id: str | None = None) -> dict:
    """Every configured section, each a nested MLflow run under one part_a run."""
    config = config or PartAConfig()
    tracking.configure(config.tracking)
    with tracking.run(f"part_a-{config.backend}", config.tracking.experiment, parent_run_id,
                      tags={"flow": "part_a", "backend": config.backend, "git_commit": tracking.git_commit()}) as run:
        tracking.log_params(flatten_params(config))
        inputs = prepare_part_a(config)
        tracking.log_params({"model.resolved": inputs.model, "model.run_id": inputs.model_run_id})
        sections = {s: run_section(config, s, inputs, run) for s in config.sections}
    publish_summary("part_a", run)
    get_run_logger().info("Part A done: MLflow run %s — %s", run, tracking.ui_hint())
    return {"run_id": run, "inputs": inputs.model_dump(), "sections": sections}


if __name__ == "__main__":
    import sys

    from difflab.cli import main

    raise SystemExit(main(["part-a", *sys.argv[1:]]))
