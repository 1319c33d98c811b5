"""The write-up page of a real tiny pipeline run, opened in a real headless Chromium: from the file the
pipeline wrote, and inside the MLflow UI's artifact view served by a real `mlflow server`.

One tiny pipeline run (module-scoped) serves every test here. Part A gets step counts that fit the tiny
profile's T = 20 (its defaults, 20 and 50 steps, are meant for T = 300).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import browser
import servers
from difflab import page as report_page

TINY_A = {"num_inference_steps": [5, 10], "sdedit_i_starts": [1, 3, 5], "i_start": 5, "num_samples": 2}
TINY_B = {"profile": "tiny", "data": {"max_train": 96}}
SERVER_START_S = 180.0
SYSTEM_METRICS_INTERVAL_S = "2"


@pytest.fixture(scope="module")
def chromium_exe() -> str:
    try:
        return browser.find_or_install()
    except browser.BrowserUnavailable as exc:
        pytest.skip(f"no headless Chromium here: {exc}")


@pytest.fixture(scope="module")
def pipeline_run(prefect_harness, tmp_path_factory):
    """One tiny pipeline run in its own folder and sqlite store; system metrics sampled every 2 s."""
    import mlflow

    from difflab.config import PipelineConfig
    from flows.pipeline import pipeline

    folder = tmp_path_factory.mktemp("report-run")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", SYSTEM_METRICS_INTERVAL_S)
        mlflow.set_tracking_uri(uri)
        result = pipeline(config=PipelineConfig(part_b=TINY_B, part_a=TINY_A))
        yield {"result": result, "folder": folder, "uri": uri}
        while mlflow.active_run() is not None:
            mlflow.end_run()


def check_page(page: browser.Page, context_id: int | None = None) -> dict:
    state = page.wait_for(browser.PAGE_CHECK_JS, timeout=60, context_id=context_id)
    assert state and state["ready"], f"the page did not finish loading: {state}"
    return state


def assert_complete_write_up(state: dict) -> None:
    assert state["sections"] == list(report_page.SECTION_IDS)
    assert state["broken"] == [], f"images that did not load: {state['broken']}"
    assert state["images"] >= 25, state  # every figure of Part A and B, with both snapshot epochs
    assert state["empty_cells"] == [], f"figures with no image: {state['empty_cells']}"


def test_pipeline_logs_its_page_and_marks_the_experiment(pipeline_run):
    from mlflow.tracking import MlflowClient

    from difflab import tracking

    run_id = pipeline_run["result"]["run_id"]
    local = Path(pipeline_run["result"]["report"])
    assert local.is_file() and local.parent == pipeline_run["folder"] / "outputs" / "report"
    assert tracking.REPORT_ARTIFACT in tracking.artifact_paths(run_id)
    client = MlflowClient()
    exp = client.get_experiment(client.get_run(run_id).info.experiment_id)
    assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    metrics = client.get_run(run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics


WIDE_JS = """[...document.querySelectorAll('.pic.wide img')].map(i => ({alt: i.alt, shown: i.clientWidth,
    natural: i.naturalWidth, box: i.closest('.pic').clientWidth}))"""


def test_page_in_chromium_shows_every_section_and_image(pipeline_run, chromium_exe, tmp_path):
    from difflab import viz

    local = Path(pipeline_run["result"]["report"])
    with browser.chromium(chromium_exe) as page:
        page.goto(local.as_uri())
        state = check_page(page)
        page.pump(0.5)
        assert page.errors() == []
        wide = page.evaluate(WIDE_JS)
        page.screenshot(browser.screenshot_dir(tmp_path) / "report.png")
    assert_complete_write_up(state)
    assert state["runs"] == 1 and state["links"] > 20
    # the trajectory strips: drawn at full size (scrolling in their box), so the t= labels keep their height
    assert {w["alt"] for w in wide} == {"trajectory"} and len(wide) == 2, wide
    for w in wide:
        assert w["shown"] == w["natural"] > 0, w  # not shrunk to the column (the 3,490 px course strips were)
        assert viz.LABEL_PT * viz.DPI / 72 * w["shown"] / w["natural"] >= 10, w


def test_report_cli_default_run_and_two_side_by_side(pipeline_run, chromium_exe, tmp_path, capsys):
    """`difflab report` picks the newest pipeline run; two run ids give two columns (here the same run twice)."""
    from difflab.cli import main

    run_id = pipeline_run["result"]["run_id"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(pipeline_run["folder"])
        mp.setenv("MLFLOW_TRACKING_URI", pipeline_run["uri"])
        assert main(["report", "-o", str(tmp_path / "one.html")]) == 0
        assert run_id in (tmp_path / "one.html").read_text()
        part_b = pipeline_run["result"]["part_b"]["run_id"]
        assert main(["report", run_id, part_b, "-o", str(tmp_path / "two.html")]) == 0
        assert main(["report", "0" * 32]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("difflab: error: run 0000") and "not found" in err
    with browser.chromium(chromium_exe) as page:
        page.goto((tmp_path / "two.html").as_uri())
        state = check_page(page)
        assert page.errors() == []
    assert state["runs"] == 2 and state["sections"] == list(report_page.SECTION_IDS)
    assert state["broken"] == []
    # the part_b run has no Part A: its column says so instead of showing a broken image
    assert all(f.startswith("part_a/") for f in state["empty_cells"]) and state["empty_cells"]


@pytest.fixture
def mlflow_server(pipeline_run):
    """A real `mlflow server` on a free loopback port over the run's sqlite store; stopped after."""
    with servers.mlflow_server(pipeline_run["folder"], pipeline_run["uri"], SERVER_START_S) as url:
        yield url


def test_page_inside_the_mlflow_ui_artifact_view(pipeline_run, mlflow_server, chromium_exe, tmp_path):
    from mlflow.tracking import MlflowClient

    from difflab import tracking

    run_id = pipeline_run["result"]["run_id"]
    exp = MlflowClient().get_run(run_id).info.experiment_id
    with browser.chromium(chromium_exe) as page:
        # the link difflab prints opens the experiment on its runs, not on the GenAI overview
        page.goto(f"{mlflow_server}/#/experiments/{exp}?{tracking.UI_MODEL_TRAINING}")
        where = page.wait_for("location.hash.includes('/runs') && location.hash", timeout=60)
        assert where and "/overview" not in where, where

        page.goto(f"{mlflow_server}/#/experiments/{exp}/runs/{run_id}/artifacts/{tracking.REPORT_ARTIFACT}"
                  f"?{tracking.UI_MODEL_TRAINING}")
        frame, state = page.wait_in_child_frame(browser.PAGE_CHECK_JS, timeout=90)
        assert frame, "MLflow's artifact view showed no frame for report.html"
        assert state and state["ready"] and state["sections"], f"report.html did not load in MLflow's view: {state}"
        page.pump(1.0)
        page.screenshot(tmp_path / "mlflow-ui.png", full_page=False)
        assert page.errors(frame) == []
    assert_complete_write_up(state)


IMAGE_GRID_KEYS = ("class_ddpm.samples", "denoiser.denoised_test", "time_ddpm.samples")


def test_mlflow_chart_view_image_grid_shows_the_pipelines_stepped_samples(pipeline_run, mlflow_server, chromium_exe,
                                                                         tmp_path):
    """Issue 20.6: Add chart -> Image grid found no images, because the stepped images live on the stage runs, folded
    under the pipeline run the chart view shows. The pipeline run now carries them (`<stage>.<key>`, step = epoch),
    and its params tell pipeline runs apart."""
    from mlflow.tracking import MlflowClient

    from difflab import tracking

    run_id = pipeline_run["result"]["run_id"]
    run = MlflowClient().get_run(run_id)
    assert run.data.params["part_b.class_ddpm.guidance"] == "5.0" and run.data.params["part_b.profile"] == "tiny"
    assert run.data.params["part_a.i_start"] == "5" and "profile" not in run.data.params
    assert run.data.tags["mlflow.loggedImages"] == "True"
    stepped = sorted(tracking.split_stepped(Path(p).stem) for p in tracking.artifact_paths(run_id, "images")
                     if p.endswith(".png"))
    assert stepped == sorted((k, e) for k in IMAGE_GRID_KEYS for e in (1, 2)), stepped

    exp = run.info.experiment_id
    with browser.chromium(chromium_exe, width=1600, height=1300) as page:
        page.goto(f"{mlflow_server}/#/experiments/{exp}/runs?{tracking.UI_MODEL_TRAINING}&compareRunsMode=CHART")
        # the Image grid's picker lists the images of the runs loaded when it opens: wait for the run's row first
        assert page.wait_for(f"document.body.innerText.includes({json.dumps(run.info.run_name)})", timeout=90)
        page.pump(3)
        assert page.click_text("button", "Add chart", timeout=90), "no Add chart button in the chart view"
        assert page.click_text("[role=menuitem]", "Image grid"), "no Image grid chart type"
        assert page.click_text("[role=dialog] [role=combobox]", "Images"), "no image picker"
        # the picker fills in once the UI has listed the runs' images (seconds after the dialog opens)
        keys = page.wait_for("(() => { const k = [...document.querySelectorAll('[role=option]')]"
                             ".map(o => o.innerText.trim()); return k.length ? k : null; })()", timeout=60)
        assert set(IMAGE_GRID_KEYS) <= set(keys or []), keys
        assert page.click_text("[role=option]", "class_ddpm.samples")
        page.key("Escape", 27)
        page.evaluate("document.querySelector('[role=dialog] [role=switch]').click()")  # run params off: the image
        track = page.evaluate("(() => { let e = document.querySelector('[role=dialog] [role=slider]');"
                              " while (e && e.getBoundingClientRect().width < 60) e = e.parentElement;"
                              " const r = e.getBoundingClientRect(); return [r.right - 3, r.y + r.height / 2]; })()")
        page.click_at(*track)  # the step slider to its last epoch
        shown = page.wait_for("[...document.querySelectorAll('[role=dialog] img')].filter(i => i.complete"
                              " && i.naturalWidth > 0).map(i => decodeURIComponent(i.src))", timeout=30)
        page.screenshot(browser.screenshot_dir(tmp_path) / "mlflow-image-grid.png", full_page=False)
    assert shown and any("class_ddpm.samples+step+2+" in src for src in shown), shown
