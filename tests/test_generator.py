"""The registered models as a user calls them: MLflow pyfunc generators (and the denoiser) that carry their
signature, input example, weights and code; `difflab generate`; a Python without difflab loading them.

The networks here are tiny and untrained (D=4, T=20): these tests check the plumbing against the project's own
sampler, bit for bit. tests/test_serving.py checks, with a trained model, that the served digits are readable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from PIL import Image

from difflab import generator, tracking, viz
from difflab.config import PartBConfig
from difflab.sampling import draw
from difflab.stages import STAGES
from difflab.train import save_checkpoint
from difflab.unet import build_model

CLASS, TIME, DENOISER = "difflab-class-ddpm", "difflab-time-ddpm", "difflab-denoiser"


def tiny_checkpoint(folder: Path, stage: str, seed: int = 0) -> Path:
    """An untrained tiny network of a stage, saved as training saves it (with the stage's config)."""
    st = STAGES[stage]
    torch.manual_seed(seed)
    model = build_model(st.model_kind, hidden=4)
    return save_checkpoint(folder / f"{stage}.pt", model, st.model_kind, st.checkpoint_extra(st.config(
        PartBConfig(profile="tiny"))), epoch=2)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """The three tiny networks logged (with a linked loss) and registered in one run, as training does, in a
    store of their own shared by this module's tests (logging a model takes seconds on a busy CPU)."""
    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        tracking.configure()
        ids = {}
        with tracking.run("train", "difflab") as run_id:
            for stage in ("denoiser", "time", "class"):
                st = STAGES[stage]
                ids[stage] = tracking.log_generator(tiny_checkpoint(folder, stage), st.name, 2,
                                                    st.registered_model("difflab"), metrics={"final_loss": 0.25})
        yield {"run_id": run_id, "ids": ids, "folder": folder, "uri": uri}


@pytest.fixture(autouse=True)
def _in_the_registry(registered, monkeypatch):
    monkeypatch.chdir(registered["folder"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered["uri"])
    mlflow.set_tracking_uri(registered["uri"])


def _request(**row):
    return pd.DataFrame([{"digit": 7, "count": 4, "seed": 3, "trajectory_steps": 0, **row}])


def test_the_class_ddpm_is_a_generator_with_signature_example_and_linked_metrics(registered, tmp_path):
    model = mlflow.pyfunc.load_model(f"models:/{CLASS}/1")
    sig = model.metadata.signature
    assert [c.name for c in sig.inputs.inputs] == [name for name, _, _ in generator.REQUEST_FIELDS]
    assert [c.name for c in sig.outputs.inputs] == [name for name, _, _ in generator.RESPONSE_FIELDS]
    assert {c.name for c in sig.inputs.inputs if c.required} == {"digit", "count"}
    assert model.metadata.metadata["difflab"] == {"kind": "generator", "stage": "class", "conditional": True,
                                                  "num_timesteps": 20, "guidance": 5.0}
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{CLASS}/1",
                                                dst_path=str(tmp_path / "model"))
    example = mlflow.models.Model.load(local).load_input_example(local)
    assert example.to_dict("records") == [{"digit": 7, "count": 4, "guidance": 5.0, "seed": 0, "trajectory_steps": 0}]
    assert (Path(local) / "data" / "class.pt").is_file()
    assert (Path(local) / "code" / "difflab" / "generator.py").is_file()

    # the answer is what the project's sampler draws for the same seed, digit and guidance
    answer = model.predict(_request(trajectory_steps=4))
    assert list(answer.columns) == [name for name, _, _ in generator.RESPONSE_FIELDS]
    images = np.stack(answer["image"].to_list())
    raw = model.get_raw_model()
    expected = draw(raw.model, raw.schedule, 4, 3, torch.full((4,), 7), 5.0, 4).images[:, 0].numpy()
    np.testing.assert_array_equal(images, expected)
    assert images.shape == (4, 28, 28) and images.min() >= 0 and images.max() <= 1
    assert answer["digit"].tolist() == [7] * 4 and answer["index"].tolist() == [0, 1, 2, 3]
    assert answer["trajectory_t"][0] == [20, 15, 10, 5, 0] and answer["trajectory"][0].shape == (5, 28, 28)
    # the same row again gives the same images; another seed, other ones; guidance reaches the sampler
    np.testing.assert_array_equal(np.stack(model.predict(_request())["image"].to_list()), images)
    assert not np.array_equal(np.stack(model.predict(_request(seed=4))["image"].to_list()), images)
    assert not np.array_equal(np.stack(model.predict(_request(guidance=1.0))["image"].to_list()), images)

    # named per stage, the registered version is the training run's logged model with its linked loss
    logged = tracking.logged_model(registered["ids"]["class"])
    assert logged.name == "class_ddpm" and logged.source_run_id == registered["run_id"]
    assert tracking.logged_model_metrics(logged.model_id) == {"final_loss": 0.25}
    [version] = tracking.model_versions_of_run(CLASS, registered["run_id"])
    assert version.source == f"models:/{logged.model_id}"


@pytest.mark.parametrize("bad, field", [({"digit": 12}, "digit"), ({"count": 0}, "count"),
                                        ({"guidance": float("nan")}, "guidance"), ({"seed": -1}, "seed"),
                                        ({"trajectory_steps": 21}, "trajectory_steps"), ({"count": 2000}, "count")])
def test_a_bad_request_is_an_invalid_parameter_naming_the_field(registered, bad, field):
    model = mlflow.pyfunc.load_model(f"models:/{CLASS}/1")
    with pytest.raises(MlflowException) as err:
        model.predict(_request(**bad))
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    assert f"row 0: {field} " in err.value.message


def test_time_ddpm_draws_unconditional_digits_and_refuses_a_digit(registered):
    model = mlflow.pyfunc.load_model(f"models:/{TIME}/1")
    assert {c.name for c in model.metadata.signature.inputs.inputs if c.required} == {"count"}
    answer = model.predict(pd.DataFrame([{"count": 3, "seed": 1}]))
    raw = model.get_raw_model()
    np.testing.assert_array_equal(np.stack(answer["image"].to_list()),
                                  draw(raw.model, raw.schedule, 3, 1).images[:, 0].numpy())
    assert answer["digit"].tolist() == [generator.UNCONDITIONAL] * 3
    for bad, field in (({"digit": 7}, "digit"), ({"guidance": 5.0}, "guidance")):
        with pytest.raises(MlflowException, match=f"row 0: {field} .*time-conditioned"):
            model.predict(pd.DataFrame([{"count": 1, **bad}]))


def test_denoiser_maps_noisy_digits_to_clean_ones(registered):
    model = mlflow.pyfunc.load_model(f"models:/{DENOISER}/1")
    assert model.metadata.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 28, 28)
    noisy = np.random.default_rng(0).normal(0.3, 0.5, (3, 28, 28)).astype(np.float32)
    clean = model.predict(noisy)
    raw = model.get_raw_model()
    with torch.no_grad():
        expected = raw.model(torch.from_numpy(noisy)[:, None]).clamp(0, 1)[:, 0].numpy()
    np.testing.assert_allclose(clean, expected, atol=1e-6)
    with pytest.raises(MlflowException, match="NaN"):
        model.predict(np.full((1, 28, 28), np.nan, np.float32))


def test_logged_models_are_named_per_stage_and_found_by_run(registered):
    names = {stage: tracking.logged_model(i).name for stage, i in registered["ids"].items()}
    assert names == {"denoiser": "denoiser", "time": "time_ddpm", "class": "class_ddpm"}
    assert tracking.find_logged_model(registered["run_id"], "class_ddpm") == registered["ids"]["class"]
    assert tracking.find_logged_model(registered["run_id"], "nope") is None


CLEAN_PYTHON = r"""
import importlib, importlib.util, json, sys
from pathlib import Path

# This interpreter runs with -I (no PYTHONPATH, no cwd); also take away the editable install of difflab.
spec = importlib.util.find_spec("difflab")
if spec is not None:
    hidden = str(Path(spec.origin).resolve().parents[1])
    sys.path[:] = [p for p in sys.path if str(Path(p).resolve()) != hidden and "__editable__" not in p]
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
importlib.invalidate_caches()
assert importlib.util.find_spec("difflab") is None, "difflab still importable"

import mlflow, numpy as np, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
answer = model.predict(pd.DataFrame([{"digit": 7, "count": 4, "seed": 3, "trajectory_steps": 0}]))
np.save(sys.argv[2], np.stack(answer["image"].to_list()))
import difflab
print(json.dumps({"difflab": difflab.__file__}))
"""


def test_the_model_loads_and_predicts_in_a_python_without_difflab(registered, tmp_path):
    expected = np.stack(mlflow.pyfunc.load_model(f"models:/{CLASS}/1").predict(_request())["image"].to_list())
    script = tmp_path / "clean.py"
    script.write_text(CLEAN_PYTHON)
    out = tmp_path / "images.npy"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", str(script), f"models:/{CLASS}/1", str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    where = json.loads(proc.stdout.strip().splitlines()[-1])["difflab"]
    assert "/code/difflab/" in where and "/src/" not in where  # the model's own copy of the code
    np.testing.assert_array_equal(np.load(out), expected)


def test_generate_writes_the_grid_and_tensors_through_the_pyfunc(registered, tmp_path, capsys):
    from difflab.cli import main

    assert tracking.set_model_alias(CLASS, "champion", "1") is None
    png = tmp_path / "out" / "digits.png"
    assert main(["generate", "--model", f"models:/{CLASS}@champion", "--digits", "0123456789", "-n", "4",
                 "--seed", "3", "-o", str(png), "--npy"]) == 0
    images = np.load(png.with_suffix(".npy"))
    assert images.shape == (10, 4, 28, 28) and images.dtype == np.float32
    model = mlflow.pyfunc.load_model(f"models:/{CLASS}@champion")
    np.testing.assert_array_equal(images[7], np.stack(model.predict(_request())["image"].to_list()))
    grid = viz.grid(torch.from_numpy(images).reshape(-1, 1, 28, 28), nrow=4, scale=2)
    np.testing.assert_array_equal(np.asarray(Image.open(png).convert("RGB")), np.asarray(grid.convert("RGB")))
    assert "wrote" in capsys.readouterr().out

    # the time-conditioned model: no digits, one row
    assert main(["generate", "--model", f"models:/{TIME}/1", "-n", "3", "-o", str(tmp_path / "t.png"),
                 "--npy"]) == 0
    assert np.load(tmp_path / "t.npy").shape == (1, 3, 28, 28)


@pytest.mark.parametrize("args, words", [
    (["--model", f"models:/{CLASS}@nope"], ["models:/difflab-class-ddpm@nope", "not in the registry",
                                            "passes the quality gate", "tiny runs never promote"]),
    (["--model", f"models:/{CLASS}/7"], ["models:/difflab-class-ddpm/7", "not in the registry"]),
    (["--model", "models:/no-such-model/1"], ["not in the registry"]),
    (["--model", f"models:/{DENOISER}/1"], ["denoiser"]),
    (["--model", f"models:/{TIME}/1", "--digits", "7"], ["time-conditioned", "--digits"]),
    (["--model", f"models:/{CLASS}/1", "--digits", "7x"], ["--digits"]),
    (["--model", f"models:/{CLASS}/1", "-n", "0"], ["count 0"]),
])
def test_generate_refuses_in_one_line(registered, tmp_path, capsys, args, words):
    from difflab.cli import main

    assert main(["generate", *args, "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("difflab: error: ")
    assert all(w in err[0] for w in words), err[0]
    assert not (tmp_path / "x.png").exists()


def test_a_missing_version_is_not_told_about_aliases(registered, tmp_path, capsys):
    from difflab.cli import main

    assert main(["generate", "--model", f"models:/{CLASS}/7", "-o", str(tmp_path / "x.png")]) == 2
    assert "quality gate" not in capsys.readouterr().err


def test_generate_without_a_store_says_where_it_looked(tmp_path, monkeypatch, capsys):
    from difflab.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["generate"]) == 2
    err = capsys.readouterr().err
    assert "no MLflow store at sqlite:///mlflow.db" in err and not (tmp_path / "mlflow.db").exists()
