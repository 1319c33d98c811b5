"""The training runs in the MLflow UI's chart view: the saved view `tracking.save_training_view` writes, read the
way MLflow 3.17.2's UI reads it (its bundle: the saved-view envelope, the image file-name parser, and the rule
that the chart view charts the first 10 top-level rows, newest first, with nested runs folded)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from PIL import Image

from difflab import names, tracking, ui_views

UI_IMAGE_SEPARATORS = ("%", "+")
"""The separators the UI's parser tries, in its order."""
UI_ROWS_CHARTED = 10
"""RUNS_VISIBILITY_MODE.FIRST_10_RUNS, the UI's default and the view's."""


def ui_parses_image(path: str) -> bool:
    """MLflow 3.17's parser of one file under a run's images/: `<key>%step%<n>%timestamp%<ms>%<uuid>[...]`
    with % or +. One file it cannot parse and the UI drops every image of that run from its charts."""
    stem = path.removeprefix(f"{names.IMAGES_DIR}/").rsplit(".", 1)[0]
    sep = next((s for s in UI_IMAGE_SEPARATORS if s in stem), None)
    if sep is None:
        return False
    parts = stem.split(sep)
    return len(parts) >= 5 and parts[1] == "step" and parts[3] == "timestamp" and parts[2].isdigit()


def charted_run_ids(experiment_id: str) -> list[str]:
    """The runs the chart view charts on a fresh browser or in the view: the top-level runs, newest first,
    the first 10 (nested runs stay folded under their parent)."""
    runs = MlflowClient().search_runs([experiment_id], order_by=["attributes.start_time DESC"])
    return [r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags][:UI_ROWS_CHARTED]


def saved_views(experiment_id: str) -> dict[str, dict]:
    """The experiment's saved views as the UI lists them (id -> envelope, with `state` parsed)."""
    out = {}
    for key, value in mlflow.get_experiment(experiment_id).tags.items():
        if key.startswith(ui_views.SAVED_VIEW_TAG_PREFIX):
            env = json.loads(value)
            assert isinstance(env["name"], str) and isinstance(env["createdAt"], int) and isinstance(env["state"], str)
            out[key.removeprefix(ui_views.SAVED_VIEW_TAG_PREFIX)] = {**env, "state": json.loads(env["state"])}
    return out


def check_training_view(top_run_id: str) -> dict:
    """What a user opening the view sees, checked against the store: returns the view's state."""
    exp = tracking.get_run(top_run_id).info.experiment_id
    state = saved_views(exp)[ui_views.TRAINING_VIEW_ID]["state"]
    grids = {c["imageKeys"][0]: c["step"] for c in state["compareRunCharts"] if c["type"] == "IMAGE"}
    assert list(grids) == [f"{stage}.{key}" for stage, key in ui_views.STEPPED_IMAGES.items()]
    assert state["runsHiddenMode"] == "FIRST_10_RUNS" and not state["searchFilter"]
    assert top_run_id in charted_run_ids(exp), "the run carrying the training snapshots is out of the chart view"
    images = tracking.artifact_paths(top_run_id, names.IMAGES_DIR)
    assert images and all(ui_parses_image(p) for p in images), [p for p in images if not ui_parses_image(p)]
    for key, step in grids.items():  # each grid opens on an epoch the run has an image at: its last snapshot
        steps = {tracking.split_stepped(Path(p).stem)[1] for p in images
                 if tracking.split_stepped(Path(p).stem)[0] == key}
        assert steps and step == max(steps), f"{key}: opens on epoch {step}, the run has {sorted(steps)}"
    return state


def test_the_ui_parser_rejects_a_plain_image_beside_stepped_ones():
    """Why the view charts the top-level run's copies: a stage run keeps images/loss_curve.png beside its
    stepped images, and the UI's parser rejects that name (so the stage run shows no image at all)."""
    assert ui_parses_image("images/samples+step+5+timestamp+1795961418309+b24fa20e-7c67.png")
    assert ui_parses_image("images/samples%step%5%timestamp%1795961418309%b24fa20e+compressed.webp")
    assert not ui_parses_image(f"images/{names.LOSS_CURVE}.png")


def test_the_view_envelope_is_what_the_ui_reads():
    key, value = ui_views.saved_view_tag(ui_views.training_view_state({"class_ddpm.samples": 20}), 1_700_000_000_000)
    assert key == "mlflow.sharedViewState.difflab-training-images"
    env = json.loads(value)
    assert env["name"] == ui_views.TRAINING_VIEW_NAME and env["createdAt"] == env["updatedAt"] == 1_700_000_000_000
    state = json.loads(env["state"])
    cards = state["compareRunCharts"]
    assert [c["imageKeys"] for c in cards] == [["denoiser.denoised_test"], ["time_ddpm.samples"],
                                               ["class_ddpm.samples"]]
    assert [c["step"] for c in cards] == [ui_views.NO_STEP, ui_views.NO_STEP, 20]
    assert {c["metricSectionId"] for c in cards} == {s["uuid"] for s in state["compareRunSections"]}
    assert len(value) < 20_000  # MLflow's limit on an experiment tag's value
    url = ui_views.view_url("http://h:5000/", "7", tracking.UI_MODEL_TRAINING)
    assert url == ("http://h:5000/#/experiments/7/runs?viewStateShareKey=difflab-training-images"
                   "&compareRunsMode=CHART&workflowType=machine_learning")


def _stage_run(name: str, key: str, epochs: list[int], parent: str | None) -> str:
    with tracking.run(name, "difflab", parent_run_id=parent, tags={tracking.STAGE_TAG: name}) as run_id:
        for epoch in epochs:
            tracking.log_image(Image.new("L", (8, 8), 40 * epoch), key, step=epoch)
        tracking.log_image(Image.new("L", (8, 8), 0), names.LOSS_CURVE)
    return run_id


def test_saved_view_opens_on_the_training_snapshots_of_the_newest_run(mlflow_store):
    """A pipeline-shaped store: the top-level run, its Part B stages with stepped images and a loss curve, then
    ten Part A section runs started after them (the runs that pushed the stages out of the chart view)."""
    tracking.configure()
    with tracking.run("pipeline-tiny", "difflab", tags={"flow": "pipeline"}) as top:
        with tracking.run("part_b-tiny", "difflab", parent_run_id=top, tags={"flow": "part_b"}) as part_b:
            stages = {"denoiser": _stage_run("denoiser", names.DENOISED_TEST, [1, 5], part_b),
                      "time_ddpm": _stage_run("time_ddpm", names.SNAPSHOT_SAMPLES, [5, 20], part_b),
                      "class_ddpm": _stage_run("class_ddpm", names.SNAPSHOT_SAMPLES, [10, 46], part_b)}
        with tracking.run("part_a-mnist", "difflab", parent_run_id=top, tags={"flow": "part_a"}) as part_a:
            for i in range(10):
                with tracking.run(f"part_a/section{i}", "difflab", parent_run_id=part_a):
                    pass
        assert tracking.copy_stepped_images(stages, top) == 6
        url = tracking.save_training_view(top)
    exp = tracking.get_run(top).info.experiment_id
    # the stage runs: out of the first 10 rows once unfolded, and their own images unparseable by the UI
    assert not set(stages.values()) & set(charted_run_ids(exp))
    assert not all(ui_parses_image(p) for p in tracking.artifact_paths(stages["class_ddpm"], names.IMAGES_DIR))
    state = check_training_view(top)
    assert {c["imageKeys"][0]: c["step"] for c in state["compareRunCharts"]} == {
        "denoiser.denoised_test": 5, "time_ddpm.samples": 20, "class_ddpm.samples": 46}
    assert url.endswith(f"/#/experiments/{exp}/runs?viewStateShareKey={ui_views.TRAINING_VIEW_ID}"
                        f"&compareRunsMode=CHART&{tracking.UI_MODEL_TRAINING}")


def test_a_newer_run_refreshes_the_one_view(mlflow_store):
    """One view per experiment, not one per run: a later run rewrites it with its own last epochs."""
    tracking.configure()
    tops = []
    for epochs in ([1, 2], [1, 3]):
        with tracking.run("part_b-tiny", "difflab", tags={"flow": "part_b"}) as top:
            stage = _stage_run("class_ddpm", names.SNAPSHOT_SAMPLES, epochs, top)
            tracking.copy_stepped_images({"class_ddpm": stage}, top)
            tracking.save_training_view(top)
        tops.append(top)
    exp = tracking.get_run(tops[-1]).info.experiment_id
    views = saved_views(exp)
    assert list(views) == [ui_views.TRAINING_VIEW_ID]
    steps = {c["imageKeys"][0]: c["step"] for c in views[ui_views.TRAINING_VIEW_ID]["state"]["compareRunCharts"]}
    assert steps["class_ddpm.samples"] == 3 and steps["time_ddpm.samples"] == ui_views.NO_STEP
    assert set(tops) <= set(charted_run_ids(exp))
    with pytest.raises(AssertionError):  # no time_ddpm stage here: its grid has no image to open on
        check_training_view(tops[-1])


# ----------------------------------------------------------------- seen in the UI: a real server, headless Chromium

SERVER_START_S = 180.0
GRID_IMAGES_JS = """(() => {
  const imgs = [...document.images].filter(i => i.src.includes('get-artifact'));
  const loaded = imgs.filter(i => i.complete && i.naturalWidth > 0).map(i => decodeURIComponent(i.src));
  const text = document.body ? document.body.innerText : '';
  return {ready: loaded.length >= %d, loaded: loaded, view: text.includes(%s), text: text.slice(0, 2000)};
})()"""


@pytest.fixture(scope="module")
def two_runs_store(tmp_path_factory):
    """Two pipeline-shaped top-level runs (each with 10 Part A children started after its stages), the view
    written by the newer one."""
    folder = tmp_path_factory.mktemp("training-view")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    tops = []
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        tracking.configure()
        for _ in range(2):
            with tracking.run("pipeline-tiny", "difflab", tags={"flow": "pipeline"}) as top:
                stages = {name: _stage_run(name, key, [1, 2], top) for name, key in ui_views.STEPPED_IMAGES.items()}
                for i in range(10):
                    with tracking.run(f"part_a/section{i}", "difflab", parent_run_id=top):
                        pass
                tracking.copy_stepped_images(stages, top)
                tracking.save_training_view(top)
            tops.append(top)
        yield {"folder": folder, "uri": uri, "tops": tops, "exp": tracking.get_run(top).info.experiment_id}


@pytest.fixture(scope="module")
def ui_server(two_runs_store):
    from servers import mlflow_server

    with mlflow_server(two_runs_store["folder"], two_runs_store["uri"], SERVER_START_S) as url:
        yield url


def test_the_view_shows_each_stage_snapshot_of_both_runs(two_runs_store, ui_server, tmp_path):
    """Opened from its address in a fresh browser: an Image grid per stage with a column per run, at the last
    epoch, although each run's twelve nested runs came after its stages."""
    import browser

    try:
        exe = browser.find_or_install()
    except browser.BrowserUnavailable as exc:
        pytest.skip(f"no headless Chromium here: {exc}")
    url = ui_views.view_url(ui_server, two_runs_store["exp"], tracking.UI_MODEL_TRAINING)
    want = len(ui_views.STEPPED_IMAGES) * len(two_runs_store["tops"])
    with browser.chromium(exe, width=1600, height=1200) as page:
        page.goto(url)
        state = page.wait_for(GRID_IMAGES_JS % (want, json.dumps(ui_views.TRAINING_VIEW_NAME)), timeout=90)
        shot = page.screenshot(browser.screenshot_dir(tmp_path) / "training-view.png", full_page=False)
    assert state and state["view"], f"the view did not open: {state and state['text']}"
    shown = {(key, top) for key in ui_views.training_image_keys() for top in two_runs_store["tops"]
             if any(f"images/{key}+step+2+" in src and f"run_uuid={top}" in src for src in state["loaded"])}
    assert len(shown) == want, f"grids show {sorted(shown)} of {want}: {state['loaded']}"
    assert shot.stat().st_size > 10_000
