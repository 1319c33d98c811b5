"""The main job end to end on tiny settings: Part B with evaluation, then Part A on the model it trained,
then a comparison of two Part B runs; and the Part A errors a user can meet."""

from __future__ import annotations

import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from difflab.tracking import artifact_paths, child_runs
from difflab.config import PART_A_SECTIONS, CompareConfig, PipelineConfig

TINY_B = {"profile": "tiny", "data": {"max_train": 96}, "time_ddpm": {"num_timesteps": 10},
          "class_ddpm": {"num_timesteps": 10}}
TINY_A = {"num_inference_steps": [3, 5], "sdedit_i_starts": [1, 3, 5], "i_start": 5, "num_samples": 2}



@pytest.fixture
def pipeline_run(prefect_harness, mlflow_store):
    from flows.pipeline import pipeline

    return pipeline(config=PipelineConfig(part_b=TINY_B, part_a=TINY_A))


def test_pipeline_runs_part_b_then_part_a_with_quality_metrics(pipeline_run):
    client = MlflowClient()
    top = client.get_run(pipeline_run["run_id"])
    assert top.info.status == "FINISHED"
    part_b = client.get_run(pipeline_run["part_b"]["run_id"])
    part_a = client.get_run(pipeline_run["part_a"]["run_id"])
    assert part_b.data.tags["mlflow.parentRunId"] == part_a.data.tags["mlflow.parentRunId"] == top.info.run_id
    # the top-level run compares in the runs table without expanding it, and fills MLflow's Source column
    for key in ("eval.class_agreement", "eval.denoiser_psnr", "class_ddpm.final_loss", "denoiser.train_seconds"):
        assert top.data.metrics[key] == part_b.data.metrics[key], key
    assert top.data.tags["mlflow.source.git.commit"] == top.data.tags["git_commit"] != ""
    # the MLflow UI's saved training view opens on this run's snapshots, images the UI can parse
    from test_ui_views import check_training_view

    check_training_view(top.info.run_id)

    # evaluation: headline numbers on the Part B parent, details in its evaluation child
    for key in ("judge_accuracy", "class_agreement", "class_confidence", "class_frechet", "time_frechet",
                "frechet_real_floor", "denoiser_psnr"):
        assert f"eval.{key}" in part_b.data.metrics, key
    assert 0 <= part_b.data.metrics["eval.class_agreement"] <= 1
    evaluation = next(r for r in child_runs(part_b.info.run_id) if r.info.run_name == "evaluation")
    assert {f"class.agreement.digit_{d}" for d in range(10)} <= set(evaluation.data.metrics)
    assert "denoiser.psnr.sigma_0.5" in evaluation.data.metrics
    files = artifact_paths(evaluation.info.run_id)
    assert "class_agreement.json" in files and "images/judged_samples.png" in files
    assert any(f.startswith("judge/judge-") for f in files)

    # Part A: every section ran on the checkpoint Part B just trained, each in its own nested run
    assert part_a.data.params["model.resolved"] == pipeline_run["part_b"]["stages"]["class"]["checkpoint"]
    sections = {r.info.run_name: r for r in child_runs(part_a.info.run_id)}
    assert set(sections) == {f"part_a/{s}" for s in PART_A_SECTIONS}
    expected = {"sample_steps": "sample_steps", "denoise": "denoise_compared", "sample": "samples_unguided",
                "cfg": "samples_cfg", "sdedit": "sdedit", "inpaint": "inpaint", "i2i": "image_to_image",
                "anagram": "anagram_0", "hybrid": "hybrid_0_small"}
    for section, image in expected.items():
        run = sections[f"part_a/{section}"]
        assert run.info.status == "FINISHED"
        assert f"images/{image}.png" in artifact_paths(run.info.run_id), section
        assert run.data.params["seed"] == "180" and run.data.params["backend"] == "mnist"
    assert sections["part_a/inpaint"].data.metrics["unmasked_max_abs_change"] == pytest.approx(0, abs=1e-5)
    assert "hand_drawn_7.png" in sections["part_a/sdedit"].data.params["user_images"]

    # The Prefect UI: the pipeline's summary artifact holds both parts' headline numbers.
    from test_ops_flows import _artifacts

    summary = _artifacts("pipeline-summary")[0].data
    assert "## part_b:" in summary and "## part_a:" in summary and "eval.class_agreement" in summary


def test_compare_puts_two_runs_side_by_side(pipeline_run, tmp_path):
    from flows.compare import compare
    from flows.part_b import part_b
    from difflab.config import PartBConfig

    other = part_b(config=PartBConfig(**{**TINY_B, "class_ddpm": {"num_timesteps": 10, "guidance": 2.0}},
                                      stages=["class"]))
    result = compare(config=CompareConfig(output_dir=str(tmp_path / "cmp")))
    assert set(result["runs"]) == {pipeline_run["part_b"]["run_id"], other["run_id"]}
    rows = {r["run_id"]: r for r in result["table"]}
    assert rows[other["run_id"]]["params.class_ddpm.guidance"] == "2.0"
    assert rows[pipeline_run["part_b"]["run_id"]]["params.class_ddpm.guidance"] == "5.0"
    markdown = (tmp_path / "cmp" / "comparison.md").read_text()
    assert other["run_id"] in markdown and pipeline_run["part_b"]["run_id"] in markdown
    assert {"report/comparison.csv", "report/comparison.md", "report/metric_bars.png", "report/curves.png"} <= \
        set(artifact_paths(result["run_id"]))


def test_part_a_without_a_model_says_how_to_get_one(prefect_harness, mlflow_store, capsys):
    from difflab.cli import main

    assert main(["part-a"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "difflab part-b" in err and "mnist.train_if_missing=true" in err
    failed = mlflow.search_runs(experiment_names=["difflab"], filter_string="tags.flow = 'part_a'")
    assert list(failed.status) == ["FAILED"]


def test_deepfloyd_without_weights_stops_at_once_with_the_way_forward(prefect_harness, mlflow_store, capsys):
    from difflab.cli import main

    start = time.monotonic()
    assert main(["part-a", "--set", "backend=deepfloyd"]) == 2
    assert time.monotonic() - start < 60
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("difflab: error:") and "licence" in err.lower()
