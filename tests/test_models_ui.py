"""Checkpoints as MLflow 3 logged models, seen as a user sees them: a real `mlflow server` over a store where a
training run logged its snapshot checkpoints and its final model; the experiment's Models tab in headless
Chromium lists them side by side, and `difflab generate` draws from the champion through the tracking server.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import numpy as np
import pytest

import browser
import servers
from difflab import tracking
from difflab.stages import STAGES
from test_generator import tiny_checkpoint

SERVER_START_S = 180.0
MODEL = "difflab-class-ddpm"
EPOCH_LOSS = {1: 0.09, 2: 0.05, 3: 0.07}
"""A made-up loss per epoch: the best checkpoint (epoch 2) is not the last one."""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A class_ddpm training run that logged epochs 1 and 2 as snapshot models and epoch 3 as the final,
    registered one (the champion), each with its epoch_loss linked."""
    folder = tmp_path_factory.mktemp("models-ui")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        tracking.configure()
        st = STAGES["class"]
        ids = {}
        with tracking.run("class_ddpm", "difflab", tags={tracking.STAGE_TAG: st.name}) as run_id:
            for epoch, loss in EPOCH_LOSS.items():
                name = st.name if epoch == max(EPOCH_LOSS) else f"{st.name}-epoch-{epoch}"
                ids[epoch] = tracking.log_generator(tiny_checkpoint(folder, "class", seed=epoch), name, epoch,
                                                    metrics={"epoch_loss": loss}, tags={tracking.STAGE_TAG: st.name})
        tracking.set_model_alias(MODEL, "champion", tracking.register_logged_model(ids[max(EPOCH_LOSS)], MODEL))
        exp = tracking.get_run(run_id).info.experiment_id
        yield {"folder": folder, "uri": uri, "run_id": run_id, "ids": ids, "experiment_id": exp}


@pytest.fixture(scope="module")
def mlflow_server(store):
    with servers.mlflow_server(store["folder"], store["uri"], SERVER_START_S) as url:
        yield url


def test_search_logged_models_ranks_the_checkpoints(store):
    mlflow.set_tracking_uri(store["uri"])
    ranked = mlflow.search_logged_models(experiment_ids=[store["experiment_id"]], output_format="list",
                                         order_by=[{"field_name": "metrics.epoch_loss", "ascending": True}])
    assert [m.name for m in ranked] == ["class_ddpm-epoch-2", "class_ddpm", "class_ddpm-epoch-1"]
    steps = {o.model_id: o.step for o in tracking.get_run(store["run_id"]).outputs.model_outputs}
    assert steps == {store["ids"][e]: e for e in EPOCH_LOSS}


def test_generate_from_a_tracking_server(store, mlflow_server, tmp_path, monkeypatch):
    from difflab.cli import main

    monkeypatch.chdir(tmp_path)  # no local store here: everything comes from the server
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "digits.png"
    assert main(["generate", "--tracking-uri", mlflow_server, "--digits", "07", "-n", "2", "-o", str(out),
                 "--npy"]) == 0
    assert np.load(out.with_suffix(".npy")).shape == (2, 2, 28, 28) and out.is_file()
    assert not (tmp_path / "mlflow.db").exists()


@pytest.fixture(scope="module")
def chromium_exe() -> str:
    try:
        return browser.find_or_install()
    except browser.BrowserUnavailable as exc:
        pytest.skip(f"no headless Chromium here: {exc}")


MODELS_TAB_JS = """(() => {
  const text = document.body ? document.body.innerText : '';
  const names = %s;
  return {ready: names.every(n => text.includes(n)), found: names.filter(n => text.includes(n)),
          rows: document.querySelectorAll('[role="row"], tr').length, text: text.slice(0, 3000)};
})()"""


def test_the_experiment_models_tab_lists_the_checkpoints(store, mlflow_server, chromium_exe, tmp_path):
    names = ["class_ddpm-epoch-1", "class_ddpm-epoch-2", "class_ddpm"]
    with browser.chromium(chromium_exe, width=2000, height=900) as page:
        page.goto(f"{mlflow_server}/#/experiments/{store['experiment_id']}/models?{tracking.UI_MODEL_TRAINING}")
        state = page.wait_for(MODELS_TAB_JS % names, timeout=90)
        page.pump(1.0)
        shot = page.screenshot(tmp_path / "models-tab.png", full_page=False)
    assert state and state["ready"], f"the Models tab did not list {names}: {state and state['text']}"
    assert shot.stat().st_size > 10_000
    if os.environ.get("DIFFLAB_SCREENSHOTS"):
        Path(os.environ["DIFFLAB_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ["DIFFLAB_SCREENSHOTS"]) / "models-tab.png").write_bytes(shot.read_bytes())
