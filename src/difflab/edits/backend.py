"""The one interface every Part A algorithm needs from a diffusion model.

A backend knows its alpha_bar schedule, the image shape and value range, how to
turn a condition name (a prompt, a digit) into a condition tensor, and how to
estimate the noise (and, if the model has one, a variance) for a batch.
Condition tensors have a leading batch dimension of 1 so algorithms can expand
and concatenate them without knowing what they hold.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from difflab.ddpm import NoiseEstimate


__all__ = ["Backend", "BackendUnavailable", "NoiseEstimate", "num_timesteps"]


class BackendUnavailable(RuntimeError):
    """A backend's weights cannot be had here; the message says how to get them."""


@runtime_checkable
class Backend(Protocol):
    name: str
    alphas_cumprod: torch.Tensor
    """alpha_bar_t for t = 0..T-1, float32 on the CPU."""
    image_shape: tuple[int, int, int]
    value_range: tuple[float, float]
    device: torch.device

    def condition(self, name: str) -> torch.Tensor:
        """Condition tensor (batch 1) for a name; unknown names raise a one-line ValueError."""
        ...

    def uncond(self) -> torch.Tensor:
        """The unconditional condition (batch 1)."""
        ...

    def predict(self, x_t: torch.Tensor, t: int, cond: torch.Tensor) -> NoiseEstimate:
        """Noise estimate for x_t (B, C, H, W) float32 at integer step t; cond has batch B."""
        ...


def num_timesteps(backend: Backend) -> int:
    return int(backend.alphas_cumprod.shape[0])
