"""Drawing digits from trained DDPMs: plain (time-conditioned) or guided (class-conditioned).

A thin layer over `ddpm.sample` that fixes the seed, the batch layout and the
trajectory frames, so tasks and tests get the same pictures for the same inputs,
and every frame comes with the timestep it shows.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from difflab import fastpath
from difflab.ddpm import DDPMSchedule, guided_eps_fn, kept_timesteps, sample, time_eps_fn
from difflab.unet import IMAGE_SIZE, NUM_CLASSES

DATA_RANGE = (0.0, 1.0)
"""Pixel values of the training digits: what clip_x0 clamps the predicted clean image to."""


@dataclass
class Samples:
    images: torch.Tensor
    """(N, 1, 28, 28) in [0, 1]."""
    labels: torch.Tensor | None = None
    """The digit asked for, per image; None for the time-conditioned model."""
    frames: list[torch.Tensor] = field(default_factory=list)
    """The denoising trajectory, pure noise first, unclipped."""
    frame_timesteps: list[int] = field(default_factory=list)
    """frames[i] is x at t = frame_timesteps[i]: T for the pure noise, 0 for the result."""


def schedule_from_extra(extra: dict) -> DDPMSchedule:
    """The schedule a checkpoint was trained with (stored in its `extra`)."""
    return DDPMSchedule(int(extra["num_timesteps"]), float(extra["beta1"]), float(extra["beta2"]))


def frames_every(num_timesteps: int, frames: int) -> int:
    """Keep every k-th state so that about `frames` frames span the trajectory (0: none)."""
    return max(1, num_timesteps // max(1, frames)) if frames else 0


@torch.no_grad()
def draw(model: nn.Module, schedule: DDPMSchedule, n: int, seed: int = 0, labels: torch.Tensor | None = None,
         guidance: float = 0.0, frames: int = 0, fast: fastpath.Speed | None = None, clip_x0: bool = False) -> Samples:
    """n samples (one per label when labels are given, guided with classifier-free guidance).

    `fast` picks the speed levers (None or disabled: the plain network); the noise is the same either way."""
    device = next(model.parameters()).device
    levers = fastpath.Levers.resolve(fast, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    schedule = schedule.to(device)
    model.eval()
    if labels is not None:
        n = len(labels)
    shape = (n, 1, IMAGE_SIZE, IMAGE_SIZE)
    mode = torch.inference_mode() if fast is not None and fast.enabled else contextlib.nullcontext()
    with mode, fastpath.cuda_backends(levers):
        net = fastpath.sampling_model(model, levers)
        if labels is None:
            eps_fn = time_eps_fn(net, schedule)
        else:
            eps_fn = guided_eps_fn(net, schedule, labels.to(device), guidance)
        if levers.sample_channels_last:
            plain_eps = eps_fn
            eps_fn = lambda x, t: plain_eps(x.contiguous(memory_format=torch.channels_last), t)  # noqa: E731
        eps_fn = fastpath.graph_eps_fn(eps_fn, shape, device, levers)
        x_T = torch.randn(shape, generator=gen, device=device)
        every = frames_every(schedule.num_timesteps, frames)
        x, traj = sample(eps_fn, schedule, shape, gen, device, x_T=x_T, keep_every=every,
                         clip_x0=DATA_RANGE if clip_x0 else None)
    steps = kept_timesteps(schedule.num_timesteps, every)
    if every:
        traj, steps = [x_T.cpu(), *traj], [schedule.num_timesteps, *steps]
    return Samples(x.clamp(0, 1).cpu(), None if labels is None else labels.cpu(), traj, steps)


def draw_batched(model: nn.Module, schedule: DDPMSchedule, n: int, batch: int, seed: int = 0,
                 labels: torch.Tensor | None = None, guidance: float = 0.0,
                 fast: fastpath.Speed | None = None, clip_x0: bool = False) -> torch.Tensor:
    """Many samples in batches (batch k seeded seed + k * batch), for evaluation."""
    out = []
    for i in range(0, n, batch):
        part = None if labels is None else labels[i:i + batch]
        out.append(draw(model, schedule, min(batch, n - i), seed + i, part, guidance, fast=fast,
                        clip_x0=clip_x0).images)
    return torch.cat(out)


def digit_labels(per_class: int, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """0,0,..,1,1,..: per_class of every digit, grouped so a grid shows one digit per row."""
    return torch.arange(num_classes).repeat_interleave(per_class)
