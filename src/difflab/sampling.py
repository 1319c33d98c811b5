"""Drawing digits from trained DDPMs: plain (time-conditioned) and guided (class-conditioned).

Thin wrappers over `ddpm.sample` that fix the seed, the batch layout and the
trajectory frames, so tasks and tests get the same pictures for the same inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from difflab.ddpm import DDPMSchedule, cfg_eps_fn, sample, time_eps_fn
from difflab.unet import IMAGE_SIZE, NUM_CLASSES


def schedule_from_extra(extra: dict) -> DDPMSchedule:
    """The schedule a checkpoint was trained with (stored in its `extra`)."""
    return DDPMSchedule(extra["num_timesteps"], extra["beta1"], extra["beta2"])


def _frames_every(schedule: DDPMSchedule, frames: int) -> int:
    return max(1, schedule.num_timesteps // max(1, frames)) if frames else 0


@torch.no_grad()
def sample_time_conditioned(model: nn.Module, schedule: DDPMSchedule, n: int, seed: int = 0,
                            frames: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """n digits from the time-conditioned UNet; returns (images clipped to [0, 1], trajectory)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    schedule = schedule.to(device)
    x, traj = sample(time_eps_fn(model.eval(), schedule), schedule, (n, 1, IMAGE_SIZE, IMAGE_SIZE), gen, device,
                     keep_every=_frames_every(schedule, frames))
    return x.clamp(0, 1).cpu(), traj


@torch.no_grad()
def sample_class_conditioned(model: nn.Module, schedule: DDPMSchedule, labels: torch.Tensor, guidance: float,
                             seed: int = 0, frames: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One guided sample per label; returns (images clipped to [0, 1], trajectory)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    schedule = schedule.to(device)
    labels = labels.to(device)
    x, traj = sample(cfg_eps_fn(model.eval(), schedule, labels, guidance), schedule,
                     (len(labels), 1, IMAGE_SIZE, IMAGE_SIZE), gen, device,
                     keep_every=_frames_every(schedule, frames))
    return x.clamp(0, 1).cpu(), traj


def digit_labels(per_class: int, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """0,0,..,1,1,..: per_class of every digit, grouped so a grid shows one digit per row."""
    return torch.arange(num_classes).repeat_interleave(per_class)
