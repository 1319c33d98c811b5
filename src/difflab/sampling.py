"""Drawing digits from trained DDPMs: plain (time-conditioned) and guided (class-conditioned).

Thin wrappers over `ddpm.sample` that fix the seed, the batch layout and the
trajectory frames, so tasks and tests get the same pictures for the same inputs.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from difflab import fastpath
from difflab.config import FastPath
from difflab.ddpm import DDPMSchedule, cfg_eps_fn, sample, time_eps_fn
from difflab.unet import IMAGE_SIZE, NUM_CLASSES


def schedule_from_extra(extra: dict) -> DDPMSchedule:
    """The schedule a checkpoint was trained with (stored in its `extra`)."""
    return DDPMSchedule(extra["num_timesteps"], extra["beta1"], extra["beta2"])


def _frames_every(schedule: DDPMSchedule, frames: int) -> int:
    return max(1, schedule.num_timesteps // max(1, frames)) if frames else 0


def _run(make_eps, model: nn.Module, schedule: DDPMSchedule, n: int, seed: int, frames: int,
         fast: FastPath | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Shared by both samplers: the same noise from the same seed, through the plain or the fast network."""
    device = next(model.parameters()).device
    levers = fastpath.Levers.resolve(fast, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    schedule = schedule.to(device)
    shape = (n, 1, IMAGE_SIZE, IMAGE_SIZE)
    mode = torch.inference_mode() if fast is not None and fast.enabled else contextlib.nullcontext()
    with mode, fastpath.cuda_backends(levers):
        eps_fn = make_eps(fastpath.sampling_model(model, levers))
        if levers.sample_channels_last:
            plain_eps = eps_fn
            eps_fn = lambda x, t: plain_eps(x.contiguous(memory_format=torch.channels_last), t)  # noqa: E731
        eps_fn = fastpath.graph_eps_fn(eps_fn, shape, device, levers)
        x, traj = sample(eps_fn, schedule, shape, gen, device, keep_every=_frames_every(schedule, frames))
    return x.clamp(0, 1).cpu(), traj


@torch.no_grad()
def sample_time_conditioned(model: nn.Module, schedule: DDPMSchedule, n: int, seed: int = 0,
                            frames: int = 0, fast: FastPath | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """n digits from the time-conditioned UNet; returns (images clipped to [0, 1], trajectory)."""
    return _run(lambda net: time_eps_fn(net, schedule.to(next(model.parameters()).device)), model, schedule, n,
                seed, frames, fast)


@torch.no_grad()
def sample_class_conditioned(model: nn.Module, schedule: DDPMSchedule, labels: torch.Tensor, guidance: float,
                             seed: int = 0, frames: int = 0,
                             fast: FastPath | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One guided sample per label; returns (images clipped to [0, 1], trajectory)."""
    device = next(model.parameters()).device
    labels = labels.to(device)
    return _run(lambda net: cfg_eps_fn(net, schedule.to(device), labels, guidance), model, schedule, len(labels),
                seed, frames, fast)


def digit_labels(per_class: int, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """0,0,..,1,1,..: per_class of every digit, grouped so a grid shows one digit per row."""
    return torch.arange(num_classes).repeat_interleave(per_class)
