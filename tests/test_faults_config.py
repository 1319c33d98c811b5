"""Issue 8, items 5 and 8: impossible values and malformed config files stop at parse time, one line, exit 2."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from difflab.cli import main
from difflab.config import CompareConfig, DataConfig, PartAConfig, PartBConfig


@pytest.mark.parametrize("override", [
    {"denoiser": {"batch_size": 0}}, {"class_ddpm": {"epochs": 0}}, {"time_ddpm": {"lr": -1e-3}},
    {"class_ddpm": {"guidance": math.nan}}, {"class_ddpm": {"guidance": math.inf}}, {"denoiser": {"sigma": -0.1}},
    {"denoiser": {"sigma_sweep": [0.0, -1.0]}}, {"class_ddpm": {"snapshot_epochs": [0, 2]}},
    {"class_ddpm": {"p_uncond": 1.5}}, {"time_ddpm": {"beta1": 0.5, "beta2": 0.1}},
    {"time_ddpm": {"num_timesteps": 1}}, {"evaluation": {"num_samples": 0}}, {"cpu_threads": 0},
])
def test_impossible_part_b_values_are_rejected(override):
    with pytest.raises(ValidationError):
        PartBConfig(profile="tiny", **override)


@pytest.mark.parametrize("override", [
    {"guidance": math.nan}, {"num_inference_steps": [0]}, {"sdedit_i_starts": [-1]}, {"i_start": -2},
    {"num_samples": 0}, {"forward_timesteps": [-5]}, {"mnist": {"test_index": -1}},
])
def test_impossible_part_a_values_are_rejected(override):
    with pytest.raises(ValidationError):
        PartAConfig(**override)


def test_impossible_data_and_compare_values_are_rejected():
    for bad in ({"max_train": 0}, {"probe_timeout_s": 0}, {"test_fraction": 1.0}):
        with pytest.raises(ValidationError):
            DataConfig(**bad)
    with pytest.raises(ValidationError):
        CompareConfig(max_runs=0)


def test_training_sigma_joins_the_evaluation_sweep():
    c = PartBConfig(profile="tiny", denoiser={"sigma": 0.3})
    assert c.denoiser.sigma_sweep == [0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0]
    assert PartBConfig(profile="tiny").denoiser.sigma_sweep == [0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0]
    assert PartBConfig.model_validate(c.model_dump(mode="json")) == c


def test_cli_rejects_nan_guidance_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["part-a", "--set", "guidance=NaN"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "guidance" in err[0] and "finite" in err[0]
    assert not (tmp_path / "mlflow.db").exists()  # stopped before tracking was touched


@pytest.mark.parametrize("name,text,line", [
    ("bad.yaml", "class_ddpm:\n  epochs: 3\n guidance: [1, 2\n", 3),
    ("bad.json", '{"class_ddpm":\n {"epochs": 3,}}\n', 2),
])
def test_malformed_config_file_names_file_and_line(tmp_path, capsys, name, text, line):
    path = tmp_path / name
    path.write_text(text)
    assert main(["part-b", "--profile", "tiny", "--config", str(path), "--print-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and f"line {line}" in err[0]


def test_config_file_must_hold_a_mapping(tmp_path, capsys):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    assert main(["part-b", "--config", str(path), "--print-config"]) == 2
    assert "not a mapping" in capsys.readouterr().err
