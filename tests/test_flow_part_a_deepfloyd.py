"""The Part A flow on DeepFloyd's code path: a tiny IF-like pipeline saved with save_pretrained and
loaded by folder through the same loader as hub ids, with stage II upsampling every result."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image, ImageDraw

from difflab.tracking import artifact_paths
from difflab.config import PartAConfig
from test_edits_support import PROMPTS, tiny_if_folders



def test_part_a_flow_on_a_tiny_deepfloyd(prefect_harness, mlflow_store, tmp_path):
    from flows.part_a import part_a

    stage1, stage2, embeds = tiny_if_folders()
    photo = tmp_path / "photo.png"
    Image.new("RGB", (80, 60), (200, 120, 40)).save(photo)  # not square: centre-cropped and resized
    p = PROMPTS[2:]
    cfg = PartAConfig(
        backend="deepfloyd", sections=["sample_steps", "denoise", "sdedit", "inpaint", "anagram", "hybrid"],
        num_inference_steps=[2], sdedit_i_starts=[20], num_samples=1, prompts=p[:1],
        anagrams=[{"first": p[0], "second": p[1], "view": "flip"}], hybrids=[{"low": p[1], "high": p[2]}],
        inpaint_rect={"top": 4, "left": 4, "height": 8, "width": 8},
        deepfloyd={"stage1": str(stage1), "stage2": str(stage2), "embeddings": str(embeds),
                   "test_image": str(photo)},
    )
    result = part_a(config=cfg)
    client = MlflowClient()
    runs = {r.info.run_name: r for r in
            client.search_runs([client.get_run(result["run_id"]).info.experiment_id],
                               f"tags.`mlflow.parentRunId` = '{result['run_id']}'")}
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert runs["part_a/denoise"].data.params["num_timesteps"] == "1000"
    assert runs["part_a/denoise"].data.params["t_start"] == "690"  # strided 990, 960, ..., i_start 10
    expected = {"sample_steps": "sample_steps_2_stage2", "sdedit": "sdedit_test_image_stage2",
                "inpaint": "inpaint_stage2", "anagram": "anagram_0_stage2", "hybrid": "hybrid_0_stage2"}
    for section, image in expected.items():
        assert f"images/{image}.png" in artifact_paths(runs[f"part_a/{section}"].info.run_id), section
    assert runs["part_a/inpaint"].data.metrics["unmasked_max_abs_change"] == pytest.approx(0, abs=1e-5)


def test_bad_inputs_are_one_line_errors(prefect_harness, mlflow_store, tmp_path, capsys):
    from difflab.cli import main

    stage1, _, embeds = tiny_if_folders()
    photo = tmp_path / "photo.png"
    drawn = Image.new("RGB", (64, 64))  # a white square on black: a blank image is refused before anything else
    ImageDraw.Draw(drawn).rectangle([16, 16, 47, 47], fill="white")
    drawn.save(photo)
    base = ["part-a", "--set", "backend=deepfloyd", "--set", f"deepfloyd.stage1={stage1}",
            "--set", "deepfloyd.stage2=null", "--set", f"deepfloyd.embeddings={embeds}"]
    cases = [
        (["--set", f"deepfloyd.test_image={embeds}", "--set", 'sections=["sample"]'], "image"),
        (["--set", f"deepfloyd.test_image={photo}", "--set", 'sections=["cfg"]',
          "--set", 'cfg_conditions=["a prompt nobody embedded"]'], "unknown prompt"),
        (["--set", f"deepfloyd.test_image={photo}", "--set", 'sections=["inpaint"]',
          "--set", f"inpaint_mask={photo}"], "mask"),
        (["--set", f"deepfloyd.test_image={photo}", "--set", 'sections=["denoise"]', "--set", "i_start=40"],
         "i_start"),
    ]
    for extra, needle in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("difflab: error:") and needle in err, err
