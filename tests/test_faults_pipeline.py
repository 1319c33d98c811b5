"""Issue 8, item 10: every profile runs the whole pipeline; Part A's step counts fit a model with a small T."""

from __future__ import annotations

import json

from mlflow.tracking import MlflowClient

from difflab.config import PART_A_SECTIONS, PartAConfig, PipelineConfig
from difflab.edits.timesteps import cap_steps, strided_timesteps
from difflab.tracking import child_runs


def test_cap_steps_keeps_order_and_drops_duplicates():
    assert cap_steps([20, 50], 20) == [20]
    assert cap_steps([1, 3, 5, 7, 10, 20], 19) == [1, 3, 5, 7, 10, 19]
    assert cap_steps([1, 3, 5], 300) == [1, 3, 5]


def test_fit_to_backend_changes_nothing_on_the_spec_models():
    from tasks.edits import fit_to_backend

    cfg = PartAConfig()
    for T in (300, 1000):
        fitted, capped = fit_to_backend(cfg, T)
        assert fitted == cfg and capped == {}
    fitted, capped = fit_to_backend(cfg, 20)
    assert len(strided_timesteps(20)) == 20
    assert fitted.num_inference_steps == [20] and fitted.sdedit_i_starts == [1, 3, 5, 7, 10, 19]
    assert capped == {"num_inference_steps": [[20, 50], [20]], "sdedit_i_starts": [[1, 3, 5, 7, 10, 20],
                                                                                  [1, 3, 5, 7, 10, 19]]}


def test_tiny_pipeline_runs_part_a_with_its_default_values(prefect_harness, mlflow_store):
    from flows.pipeline import pipeline

    # Part A keeps every default (50 steps, i_start 20): the tiny model's T = 20 must not stop it.
    result = pipeline(config=PipelineConfig(part_b={"profile": "tiny", "stages": ["class"],
                                                    "evaluation": {"enabled": False}}))
    client = MlflowClient()
    assert client.get_run(result["run_id"]).info.status == "FINISHED"
    sections = {r.info.run_name: r for r in child_runs(result["part_a"]["run_id"])}
    assert set(sections) == {f"part_a/{s}" for s in PART_A_SECTIONS}
    assert all(r.info.status == "FINISHED" for r in sections.values())
    steps = sections["part_a/sample_steps"]
    assert json.loads(steps.data.params["num_inference_steps"]) == [20]
    assert json.loads(steps.data.tags["steps_capped"])["num_inference_steps"] == [[20, 50], [20]]
    assert json.loads(sections["part_a/sdedit"].data.params["i_starts"])[-1] == 19
