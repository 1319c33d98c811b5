"""What a registered Part B model does for a user: draw digits, or clean noisy ones.

The library half of the MLflow models every Part B run registers (`tracking.log_generator` wraps it as a
pyfunc model, with this package as the model's code, so it runs where difflab is not installed):

- a DDPM (`time_ddpm`, `class_ddpm`) answers a table of requests, one row each, with one row per image
  drawn by the project's own sampler (`sampling.draw`, on the fast path the stage was trained with);
- the single-step denoiser maps noisy digits (N, 28, 28) to clean ones (N, 28, 28).

Requests (REQUEST_FIELDS; the MLflow signature is built from these tuples):

| field | type | meaning |
|---|---|---|
| digit | int | 0-9, or -1 for none (unconditional); required by the class model, only -1 for the time model |
| count | int | images to draw for this row, 1..MAX_COUNT (required) |
| guidance | float | classifier-free guidance gamma (class-conditioned only); left out: the trained value (5) |
| seed | int | the sampler's noise, 0..2^63-1 (default 0): the same row gives the same images |
| trajectory_steps | int | keep about this many states of the denoising (0..T, default 0: none) |

Answers (RESPONSE_FIELDS), one row per image: `request` (the request's row number), `digit` (as asked,
-1 for none), `index` (0..count-1 within the request), `image` (28 x 28 floats in [0, 1], 0 black, row
major), `trajectory` (K x 28 x 28: x_t as sampled, unclipped, pure noise first; empty unless asked) and
`trajectory_t` (the K timesteps: T for the pure noise ... 0 for the result).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from difflab.fastpath import Speed
from difflab.sampling import draw, schedule_from_extra
from difflab.stages import STAGES
from difflab.train import load_model, pick_device
from difflab.unet import IMAGE_SIZE, NUM_CLASSES

UNCONDITIONAL = -1
"""The digit of an unconditional request: one-hot of -1 is the zero vector, the condition the
class-conditioned model was trained to read as "no digit" (p_uncond); guidance then returns eps_u."""
MAX_COUNT = 256
"""Images one request row may ask for (a served model answers on CPU too: 300 steps per batch)."""
MAX_TOTAL = 1024
"""Images one call may ask for over all its rows."""
MAX_SEED = 2 ** 63 - 1
DEVICE_ENV = "DIFFLAB_GENERATOR_DEVICE"
"""cpu, cuda, cuda:1 or auto (default): where a loaded model samples."""

KINDS = ("generator", "denoiser")
"""What a Part B model is as a served model: it draws digits, or it cleans them."""

REQUEST_FIELDS: tuple[tuple[str, str, bool], ...] = (
    ("digit", "long", True), ("count", "long", True), ("guidance", "double", False), ("seed", "long", False),
    ("trajectory_steps", "long", False))
"""(name, MLflow type, required by the class-conditioned model). The time-conditioned model requires only count."""
RESPONSE_FIELDS: tuple[tuple[str, str, int], ...] = (
    ("request", "long", 0), ("digit", "long", 0), ("index", "long", 0), ("image", "float", 2),
    ("trajectory", "float", 3), ("trajectory_t", "long", 1))
"""(name, element type, array depth): image is 28 x 28, trajectory K x 28 x 28, trajectory_t K."""
DENOISER_SHAPE = (-1, IMAGE_SIZE, IMAGE_SIZE)
"""The denoiser's input and output: N noisy / clean digits, float32, clean digits in [0, 1]."""


class InvalidRequest(ValueError):
    """A request the model cannot answer; the message names the row, the field and the fix."""


@dataclass(frozen=True)
class Request:
    digit: int
    count: int
    guidance: float
    seed: int
    trajectory_steps: int


@dataclass
class Answer:
    """One drawn image (a row of the response table)."""

    request: int
    digit: int
    index: int
    image: np.ndarray
    trajectory: np.ndarray
    trajectory_t: list[int] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name, _, _ in RESPONSE_FIELDS}


def _device() -> torch.device:
    return pick_device(os.environ.get(DEVICE_ENV) or "auto")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _integer(row: int, name: str, value: Any, lo: int, hi: int, fix: str) -> int:
    """value as an int in [lo, hi], else InvalidRequest naming row, field and fix."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float, np.floating)) \
            or not math.isfinite(float(value)) or float(value) != int(value):
        raise InvalidRequest(f"row {row}: {name} {value!r} is not a whole number; {fix}")
    if not lo <= int(value) <= hi:
        raise InvalidRequest(f"row {row}: {name} {int(value)} is out of range; {fix}")
    return int(value)


GENERATOR_KIND = "generator"
"""A pyfunc that draws digits from a request table (the DDPMs)."""
DENOISER_KIND = "denoiser"
"""A pyfunc that maps noisy digits to clean ones (the single-step denoiser)."""


class DigitGenerator:
    """A trained DDPM (time- or class-conditioned) answering request tables with the project's sampler."""

    kind = GENERATOR_KIND

    def __init__(self, model: torch.nn.Module, extra: dict):
        self.model, self.extra = model, extra
        self.schedule = schedule_from_extra(extra)
        config = extra.get("config", {})
        self.conditional = bool(getattr(STAGES[extra["stage"]], "conditional", False))
        self.default_guidance = float(config.get("guidance", 0.0)) if self.conditional else 0.0
        self.fast = Speed(**config["fast"]) if "fast" in config else None
        self.clip_x0 = bool(config.get("clip_x0", False))

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    def parse(self, rows: Sequence[Mapping[str, Any]]) -> list[Request]:
        """Check a request table (one mapping per row; missing or None fields take their defaults).

        Raises InvalidRequest for an empty table, a digit outside 0-9 (or -1), a digit or guidance given to
        the time-conditioned model, a count outside 1..MAX_COUNT or above MAX_TOTAL in all, a guidance that
        is not a finite number, a negative seed, or trajectory_steps outside 0..T."""
        if not rows:
            raise InvalidRequest("the request table is empty; send at least one row, e.g. {\"digit\": 7, \"count\": 4}")
        out, total = [], 0
        for i, r in enumerate(rows):
            digit = r.get("digit")
            if _missing(digit):
                if self.conditional:
                    raise InvalidRequest(f"row {i}: digit is missing; give 0-9, or {UNCONDITIONAL} for an "
                                         "unconditional sample")
                digit = UNCONDITIONAL
            if self.conditional:
                digit = _integer(i, "digit", digit, UNCONDITIONAL, NUM_CLASSES - 1,
                                 f"give 0-{NUM_CLASSES - 1}, or {UNCONDITIONAL} for an unconditional sample")
            else:
                digit = _integer(i, "digit", digit, UNCONDITIONAL, UNCONDITIONAL,
                                 f"the time-conditioned model draws unconditional digits: give {UNCONDITIONAL} "
                                 "or leave digit out (models:/difflab-class-ddpm draws a chosen digit)")
            if _missing(r.get("count")):
                raise InvalidRequest(f"row {i}: count is missing; give how many images to draw (1-{MAX_COUNT})")
            count = _integer(i, "count", r["count"], 1, MAX_COUNT, f"give 1-{MAX_COUNT} images per row")
            total += count
            if total > MAX_TOTAL:
                raise InvalidRequest(f"row {i}: count brings the call to {total} images, over {MAX_TOTAL}; "
                                     "split the table over several calls")
            guidance = self.default_guidance
            if "guidance" in r and r["guidance"] is not None:
                value = r["guidance"]
                if not self.conditional:
                    raise InvalidRequest(f"row {i}: guidance {value!r}: the time-conditioned model has no "
                                         "classifier-free guidance; leave guidance out")
                if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
                        or not math.isfinite(float(value)):
                    raise InvalidRequest(f"row {i}: guidance {value!r} is not a finite number; give e.g. "
                                         f"{self.default_guidance:g} (the trained value) in every row, or leave "
                                         "the column out")
                guidance = float(value)
            seed = 0 if _missing(r.get("seed")) else _integer(i, "seed", r["seed"], 0, MAX_SEED,
                                                              f"give 0-{MAX_SEED}")
            steps = 0 if _missing(r.get("trajectory_steps")) else _integer(
                i, "trajectory_steps", r["trajectory_steps"], 0, self.num_timesteps,
                f"give 0 (no trajectory) to {self.num_timesteps} (every step)")
            out.append(Request(digit, count, guidance, seed, steps))
        return out

    def generate(self, rows: Sequence[Mapping[str, Any]]) -> list[Answer]:
        """Draw every request (each row alone, seeded with its seed); one Answer per image, in order."""
        answers = []
        for i, req in enumerate(self.parse(rows)):
            labels = torch.full((req.count,), req.digit, dtype=torch.long) if self.conditional else None
            s = draw(self.model, self.schedule, req.count, req.seed, labels, req.guidance, req.trajectory_steps,
                     fast=self.fast, clip_x0=self.clip_x0)
            images = s.images[:, 0].numpy().astype(np.float32)
            frames = (torch.stack(s.frames, 1)[:, :, 0].numpy().astype(np.float32) if s.frames
                      else np.zeros((req.count, 0, IMAGE_SIZE, IMAGE_SIZE), np.float32))
            for k in range(req.count):
                answers.append(Answer(i, req.digit, k, images[k], frames[k], list(s.frame_timesteps)))
        return answers


class DigitDenoiser:
    """The single-step denoiser D(z): noisy digits in, clean digits (clamped to [0, 1]) out."""

    kind = DENOISER_KIND

    def __init__(self, model: torch.nn.Module, extra: dict):
        self.model, self.extra = model, extra

    @torch.no_grad()
    def denoise(self, noisy: np.ndarray) -> np.ndarray:
        """(N, 28, 28) or (N, 1, 28, 28) float -> (N, 28, 28) float32 in [0, 1]; InvalidRequest otherwise."""
        x = np.asarray(noisy, dtype=np.float32)
        if x.ndim == 4 and x.shape[1] == 1:
            x = x[:, 0]
        if x.ndim != 3 or x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise InvalidRequest(f"input of shape {tuple(x.shape)}: the denoiser takes (N, {IMAGE_SIZE}, "
                                 f"{IMAGE_SIZE}) digits (white on black, about [0, 1] plus noise)")
        if not np.isfinite(x).all():
            raise InvalidRequest("input holds NaN or infinite pixels; send finite values")
        device = next(self.model.parameters()).device
        out = self.model.eval()(torch.from_numpy(x)[:, None].to(device)).clamp(0, 1)
        return out[:, 0].cpu().numpy()


def load(path: str | Path, device: torch.device | str | None = None) -> DigitGenerator | DigitDenoiser:
    """The generator or denoiser a Part B checkpoint (`train.save_checkpoint`) holds, on `device`
    (default: $DIFFLAB_GENERATOR_DEVICE, else a GPU when there is one)."""
    path = Path(path)
    if path.is_dir():  # an MLflow model's data folder holds the one checkpoint
        found = sorted(path.glob("*.pt"))
        if len(found) != 1:
            raise FileNotFoundError(f"{path} should hold one checkpoint (*.pt), found {len(found)}")
        path = found[0]
    model, extra = load_model(path, device or _device())
    stage = STAGES.get(extra.get("stage"))
    if stage is not None:  # what the stage draws decides: digits from noise, or noisy digits made clean
        return DigitGenerator(model, extra) if stage.generative else DigitDenoiser(model, extra)
    raise ValueError(f"checkpoint {path} names no Part B stage (extra.stage={extra.get('stage')!r}); "
                     "use one written by the training flow")
