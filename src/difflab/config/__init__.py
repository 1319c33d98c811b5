"""Typed configuration: course values as defaults, named profiles, overrides on top.

`PartBConfig(profile="quick", class_ddpm={"epochs": 3})` takes every value from the
quick profile except the ones given. A resolved config dumps to a dict that
validates back to itself, so Prefect can serialise it as a flow parameter.

The package is split by concern; every public name is re-exported here, so `from difflab.config import X`
is the way in: base (strict parsing, the Prefect form's schema, types, workdir), fast (FastPath, Budget),
operations (data, tracking, promotion), part_b, part_a, profiles, runs (pipeline, compare, sweep),
overrides (parse, merge, flatten). The spec's numbers themselves live in difflab.spec (no pydantic).
"""

from __future__ import annotations

from difflab.config.base import (FROM_PROFILE, WORKDIR_ENV, Auto, Epoch, NonNegative, Positive, Sigma, _from_profile,
                                 _Strict, workdir)
from difflab.config.fast import AUTO_FAST, Budget, FastPath
from difflab.config.operations import DataConfig, PromotionGate, TrackingConfig
from difflab.config.overrides import _flatten, deep_merge, flatten_params, nested, parse_overrides
from difflab.config.part_a import (ASSETS, BACKEND_DEFAULTS, COURSE_PROMPTS, PART_A_SECTIONS, AnagramSpec,
                                   DeepFloydConfig, HybridSpec, MnistBackendConfig, PartAConfig, RectSpec)
from difflab.config.part_b import (DDPMConfig, DenoiserConfig, EvalConfig, JudgeConfig, PartBConfig, TrainConfig,
                                   _pin_explicit, describe_overrides, profile_overrides)
from difflab.config.profiles import _QUICK_DDPM, PROFILES, resolve_profile
from difflab.config.runs import DEFAULT_METRICS, WIDTH, CompareConfig, PipelineConfig, SweepConfig
from difflab import spec as _spec
from difflab.spec import (COURSE_TRAIN_IMAGES, HYBRID_KERNEL_SIZE, HYBRID_SIGMA, PART_A_SEED, PART_A_SHOW_EVERY,
                          PART_A_STRIDE)

SIGMA_SWEEP = list(_spec.SIGMA_SWEEP)

__all__ = [
    "AUTO_FAST", "ASSETS", "BACKEND_DEFAULTS", "COURSE_PROMPTS", "COURSE_TRAIN_IMAGES", "DEFAULT_METRICS", "FROM_PROFILE",
    "HYBRID_KERNEL_SIZE", "HYBRID_SIGMA", "PART_A_SECTIONS", "PART_A_SEED", "PART_A_SHOW_EVERY", "PART_A_STRIDE",
    "PROFILES", "SIGMA_SWEEP", "WIDTH", "WORKDIR_ENV", "AnagramSpec", "Auto", "Budget", "CompareConfig", "DDPMConfig",
    "DataConfig", "DeepFloydConfig", "DenoiserConfig", "Epoch", "EvalConfig", "FastPath", "HybridSpec", "JudgeConfig",
    "MnistBackendConfig", "NonNegative", "PartAConfig", "PartBConfig", "PipelineConfig", "Positive", "PromotionGate",
    "RectSpec", "Sigma", "SweepConfig", "TrackingConfig", "TrainConfig", "deep_merge", "describe_overrides",
    "flatten_params", "nested", "parse_overrides", "profile_overrides", "resolve_profile", "workdir",
]
