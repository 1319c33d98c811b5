"""Part B's configs: the three trainings, the evaluation's judge, and PartBConfig that nests them.

Defaults are the spec's values (difflab.spec); a profile (difflab.config.profiles) overrides them.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from difflab import spec
from difflab.config.base import FROM_PROFILE, Epoch, Positive, Sigma, _Strict, workdir
from difflab.config.fast import Budget, FastPath
from difflab.config.operations import DataConfig, TrackingConfig
from difflab.config.overrides import deep_merge, flatten_params
from difflab.config.profiles import PROFILES, resolve_profile
from difflab.names import PART_B_STAGES


class TrainConfig(_Strict):
    """What every Part B training shares: the network's width, the optimizer and the epochs."""

    model_config = FROM_PROFILE

    hidden: Positive = spec.DDPM_HIDDEN
    batch_size: Positive = spec.DDPM_BATCH_SIZE
    epochs: Positive = spec.DDPM_EPOCHS
    lr: float = Field(spec.DDPM_LR, gt=0)
    snapshot_epochs: list[Epoch] = Field(default_factory=lambda: list(spec.DDPM_SNAPSHOT_EPOCHS))
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
    hidden: Positive = spec.DENOISER_HIDDEN
    batch_size: Positive = spec.DENOISER_BATCH_SIZE
    epochs: Positive = spec.DENOISER_EPOCHS
    lr: float = Field(spec.DENOISER_LR, gt=0)
    snapshot_epochs: list[Epoch] = Field(default_factory=lambda: list(spec.DENOISER_SNAPSHOT_EPOCHS))
    sigma: Sigma = spec.DENOISER_SIGMA
    sigma_sweep: list[Sigma] = Field(default_factory=lambda: list(spec.SIGMA_SWEEP))
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
    lr_final_factor: float = Field(spec.DDPM_LR_FINAL_FACTOR, gt=0)
    """ExponentialLR gamma = lr_final_factor ** (1 / epochs), stepped once per epoch."""
    num_timesteps: int = Field(spec.NUM_TIMESTEPS, ge=2)
    beta1: float = Field(spec.BETA1, gt=0, lt=1)
    beta2: float = Field(spec.BETA2, gt=0, lt=1)
    p_uncond: float = Field(spec.P_UNCOND, ge=0, le=1)
    guidance: float = spec.GUIDANCE
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


def profile_overrides(cfg: "PartBConfig") -> dict[str, Any]:
    """The flat `a.b` params where cfg differs from its profile alone: what a run changed on top of the profile
    (recorded with it, so the profile tag is never contradicted silently by the params)."""
    base = flatten_params(PartBConfig(profile=cfg.profile))
    return {k: v for k, v in flatten_params(cfg).items() if base.get(k) != v}


def describe_overrides(overrides: dict[str, Any]) -> str:
    """`a.b=v, c=w` (sorted), or `none`."""
    return ", ".join(f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}"
                     for k, v in sorted(overrides.items())) or "none"
