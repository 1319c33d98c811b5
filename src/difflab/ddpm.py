"""DDPM schedule, forward noising, the denoising update and classifier-free guidance.

Indexing: a schedule of length T holds beta_t, alpha_t, alpha_bar_t for t = 0..T-1
(diffusers' convention). The spec's 1-based step t is index t-1 here, and the
spec's alpha_bar_0 = 1 is what `alpha_bar_prev` returns before index 0. The
network sees the time as t/T.

Each SPEC.md formula lives in one function below; Part A's strided sampler uses
the same functions with a stride larger than one.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from difflab.unet import one_hot


class DDPMSchedule(nn.Module):
    """beta linear from beta1 to beta2 over T steps; alpha = 1 - beta; alpha_bar = cumprod(alpha)."""

    def __init__(self, num_timesteps: int = 300, beta1: float = 1e-4, beta2: float = 0.02):
        super().__init__()
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
        if not 0.0 < beta1 <= beta2 < 1.0:
            raise ValueError(f"need 0 < beta1 <= beta2 < 1, got beta1={beta1}, beta2={beta2}")
        betas = torch.linspace(beta1, beta2, num_timesteps, dtype=torch.float64)
        alphas = 1.0 - betas
        self.num_timesteps = num_timesteps
        self.register_buffer("betas", betas.float())
        self.register_buffer("alphas", alphas.float())
        self.register_buffer("alpha_bars", torch.cumprod(alphas, 0).float())

    @classmethod
    def from_alpha_bars(cls, alpha_bars: torch.Tensor) -> "DDPMSchedule":
        """A schedule from any alpha_bar sequence (e.g. a pretrained model's alphas_cumprod)."""
        sched = cls.__new__(cls)
        nn.Module.__init__(sched)
        ab = alpha_bars.double()
        prev = torch.cat([ab.new_ones(1), ab[:-1]])
        alphas = ab / prev
        sched.num_timesteps = len(ab)
        sched.register_buffer("betas", (1 - alphas).float())
        sched.register_buffer("alphas", alphas.float())
        sched.register_buffer("alpha_bars", ab.float())
        return sched

    def alpha_bar_prev(self, t: torch.Tensor | int) -> torch.Tensor:
        """alpha_bar at t-1, with alpha_bar_{-1} = 1 (the clean image)."""
        t = torch.as_tensor(t, device=self.alpha_bars.device)
        prev = self.alpha_bars[(t - 1).clamp(min=0)]
        return torch.where(t > 0, prev, torch.ones_like(prev))

    def time_input(self, t: torch.Tensor) -> torch.Tensor:
        """The normalised time t/T that the networks are conditioned on."""
        return t.float() / self.num_timesteps


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def add_noise(x0: torch.Tensor, alpha_bar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Forward process: x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps."""
    ab = _bcast(alpha_bar, x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def add_gaussian_noise(x: torch.Tensor, sigma: float, eps: torch.Tensor) -> torch.Tensor:
    """The single-step denoiser's corruption: z = x + sigma * eps."""
    return x + sigma * eps


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """One-step estimate of the clean image: (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)."""
    ab = _bcast(alpha_bar, x_t)
    return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()


def posterior_mean(
    x_t: torch.Tensor, x0_hat: torch.Tensor, alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor
) -> torch.Tensor:
    """Mean of x_{t'} given x_t and x0_hat, for any t' < t (stride 1 is Algorithm B.2).

    With alpha_t = alpha_bar_t / alpha_bar_{t'} and beta_t = 1 - alpha_t:
    sqrt(alpha_bar_{t'}) beta_t / (1 - alpha_bar_t) * x0_hat
    + sqrt(alpha_t) (1 - alpha_bar_{t'}) / (1 - alpha_bar_t) * x_t.
    """
    ab = _bcast(alpha_bar, x_t)
    ab_prev = _bcast(alpha_bar_prev, x_t)
    alpha = ab / ab_prev
    beta = 1 - alpha
    return ab_prev.sqrt() * beta / (1 - ab) * x0_hat + alpha.sqrt() * (1 - ab_prev) / (1 - ab) * x_t


def posterior_variance(alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor) -> torch.Tensor:
    """DDPM posterior variance beta_tilde = (1 - ab_prev) / (1 - ab) * beta, for strided steps too."""
    beta = 1 - alpha_bar / alpha_bar_prev
    return (1 - alpha_bar_prev) / (1 - alpha_bar) * beta


def learned_range_variance(v: torch.Tensor, alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor) -> torch.Tensor:
    """Variance a model predicts as v in [-1, 1]: log-interpolation from beta_tilde (v=-1) to beta (v=+1).

    diffusers' `learned_range` (DeepFloyd IF), with beta and beta_tilde taken over the strided step.
    """
    ab, ab_prev = _bcast(alpha_bar, v), _bcast(alpha_bar_prev, v)
    beta = 1 - ab / ab_prev
    min_log = posterior_variance(ab, ab_prev).clamp(min=1e-20).log()
    max_log = beta.clamp(min=1e-20).log()
    frac = (v + 1) / 2
    return (frac * max_log + (1 - frac) * min_log).exp()


def cfg(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, gamma: float) -> torch.Tensor:
    """Classifier-free guidance: eps_u + gamma (eps_c - eps_u)."""
    return eps_uncond + gamma * (eps_cond - eps_uncond)


def denoiser_loss(model: nn.Module, x: torch.Tensor, sigma: float, generator=None) -> torch.Tensor:
    """L2 loss ||D(x + sigma eps) - x||^2 with fresh noise every batch."""
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return nn.functional.mse_loss(model(add_gaussian_noise(x, sigma, eps)), x)


def ddpm_loss(
    model: nn.Module,
    schedule: DDPMSchedule,
    x0: torch.Tensor,
    labels: torch.Tensor | None = None,
    p_uncond: float = 0.1,
    generator=None,
) -> torch.Tensor:
    """||eps_theta(x_t, t[, c]) - eps||^2 with t uniform; c dropped to zeros with prob p_uncond."""
    b = x0.shape[0]
    t = torch.randint(0, schedule.num_timesteps, (b,), device=x0.device, generator=generator)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = add_noise(x0, schedule.alpha_bars[t], eps)
    tin = schedule.time_input(t)
    if labels is None:
        pred = model(x_t, tin)
    else:
        c = one_hot(labels, model.num_classes).to(x0.dtype)
        keep = (torch.rand(b, device=x0.device, generator=generator) >= p_uncond).to(x0.dtype)
        pred = model(x_t, tin, c * keep[:, None])
    return nn.functional.mse_loss(pred, eps)


EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""eps_fn(x_t, t) -> noise estimate, t an integer tensor of shape (B,)."""


@torch.no_grad()
def sample(
    eps_fn: EpsFn,
    schedule: DDPMSchedule,
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    x_T: torch.Tensor | None = None,
    keep_every: int = 0,
    clip_x0: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Algorithm B.2 from pure noise; returns x_0 and, if keep_every > 0, the trajectory.

    x_{t-1} = posterior_mean(x_t, x0_hat) + sqrt(beta_t) z, z ~ N(0, I) except at the last step.
    clip_x0 = (lo, hi) clamps x0_hat to the data range first (an option outside the spec: the reference
    DDPM code's clip_denoised, against speckle in the background).
    """
    x = x_T if x_T is not None else torch.randn(shape, generator=generator, device=device)
    frames: list[torch.Tensor] = []
    kept = set(kept_timesteps(schedule.num_timesteps, keep_every))
    for i in reversed(range(schedule.num_timesteps)):
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        ab = schedule.alpha_bars[i]
        x0_hat = predict_x0(x, eps_fn(x, t), ab)
        if clip_x0 is not None:
            x0_hat = x0_hat.clamp(*clip_x0)
        x = posterior_mean(x, x0_hat, ab, schedule.alpha_bar_prev(i))
        if i > 0:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + schedule.betas[i].sqrt() * z
        if i in kept:
            frames.append(x.detach().cpu())
    return x, frames


def kept_timesteps(num_timesteps: int, keep_every: int) -> list[int]:
    """The timesteps whose states `sample` keeps: the state after the update at index i is x at t = i
    (t = 0 the clean image; the pure noise it starts from is t = T)."""
    if keep_every <= 0:
        return []
    return [i for i in reversed(range(num_timesteps)) if i % keep_every == 0]


def time_eps_fn(model: nn.Module, schedule: DDPMSchedule) -> EpsFn:
    return lambda x, t: model(x, schedule.time_input(t))


def cfg_eps_fn(model: nn.Module, schedule: DDPMSchedule, labels: torch.Tensor, gamma: float) -> EpsFn:
    """Guided noise estimate for the class-conditioned UNet; c = 0 is the unconditional pass."""
    c = one_hot(labels, model.num_classes)

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cc = c.to(device=x.device, dtype=x.dtype)
        both = model(torch.cat([x, x]), schedule.time_input(torch.cat([t, t])), torch.cat([cc, torch.zeros_like(cc)]))
        eps_c, eps_u = both.chunk(2)
        return cfg(eps_u, eps_c, gamma)

    return eps_fn
