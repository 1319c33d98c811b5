"""DDPM schedule, forward noising, the denoising update and classifier-free guidance.

Indexing: a schedule of length T holds beta_t, alpha_t, alpha_bar_t for t = 0..T-1
(diffusers' convention). The spec's 1-based step t is index t-1 here, and the
spec's alpha_bar_0 = 1 is what `alpha_bar_prev` returns before index 0. The
network sees the time as t/T.

Each SPEC.md formula lives in one function below. `DDPMSchedule.step` is one
update x_t -> x_{t'}; `denoise` is the one loop over any list of timesteps that
Part B's Algorithm B.2 (`sample`, stride 1) and every Part A section
(`edits.algorithms.iterative_denoise`, strided) run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

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

    def alpha_bar_at(self, t: int) -> torch.Tensor:
        """alpha_bar_t for an integer t, with alpha_bar = 1 at t = -1 (the clean image)."""
        return self.alpha_bars[t] if t >= 0 else torch.ones_like(self.alpha_bars[0])

    def step(self, eps: torch.Tensor, t: int, t_prev: int, x: torch.Tensor, variance: "Variance" = "beta",
             noise: torch.Tensor | None = None, clip_x0: tuple[float, float] | None = None) -> torch.Tensor:
        """One denoising update x_t -> x_{t'} (t' = t_prev < t, any stride; -1 is the clean image).

        x_{t'} = posterior_mean(x_t, x0_hat, alpha_bar_t, alpha_bar_{t'}) + sigma z, with
        x0_hat = predict_x0(x_t, eps, alpha_bar_t) (clamped to clip_x0 if given) and z = `noise`
        (None: no noise, as at the last step). sigma^2 by `variance`: "beta" is Algorithm B.2's beta_t
        (the schedule's own beta_t at stride 1, 1 - alpha_bar_t / alpha_bar_{t'} over a stride),
        "posterior" is beta_tilde (`posterior_variance`), a tensor v in [-1, 1] is a model's learned range
        (`learned_range_variance`). Shapes: eps, x, noise (B, ...); returns (B, ...).
        """
        if not 0 <= t < self.num_timesteps or not -1 <= t_prev < t:
            raise ValueError(f"a step needs 0 <= t < {self.num_timesteps} and -1 <= t_prev < t, "
                             f"got t={t}, t_prev={t_prev}")
        ab, ab_prev = self.alpha_bars[t], self.alpha_bar_at(t_prev)
        x0_hat = predict_x0(x, eps, ab)
        if clip_x0 is not None:
            x0_hat = x0_hat.clamp(*clip_x0)
        mean = posterior_mean(x, x0_hat, ab, ab_prev)
        if noise is None:
            return mean
        return mean + self.step_variance(t, t_prev, variance).sqrt() * noise

    def step_variance(self, t: int, t_prev: int, variance: "Variance" = "beta") -> torch.Tensor:
        """sigma^2 of the step t -> t_prev for a `Variance` choice (see `step`)."""
        ab, ab_prev = self.alpha_bars[t], self.alpha_bar_at(t_prev)
        if isinstance(variance, torch.Tensor):
            return learned_range_variance(variance, ab, ab_prev)
        if variance == "beta":
            return self.betas[t] if t_prev == t - 1 else step_beta(ab, ab_prev)
        if variance == "posterior":
            return posterior_variance(ab, ab_prev)
        raise ValueError(f"unknown variance {variance!r}; use one of {list(VARIANCES)} or a learned-range tensor")


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


def step_beta(alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor) -> torch.Tensor:
    """beta of a step t -> t' (any stride): 1 - alpha_bar_t / alpha_bar_{t'}; beta_t at stride 1."""
    return 1 - alpha_bar / alpha_bar_prev


def posterior_variance(alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor) -> torch.Tensor:
    """DDPM posterior variance beta_tilde = (1 - ab_prev) / (1 - ab) * beta, for strided steps too."""
    beta = step_beta(alpha_bar, alpha_bar_prev)
    return (1 - alpha_bar_prev) / (1 - alpha_bar) * beta


def learned_range_variance(v: torch.Tensor, alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor) -> torch.Tensor:
    """Variance a model predicts as v in [-1, 1]: log-interpolation from beta_tilde (v=-1) to beta (v=+1).

    diffusers' `learned_range` (DeepFloyd IF), with beta and beta_tilde taken over the strided step.
    """
    ab, ab_prev = _bcast(alpha_bar, v), _bcast(alpha_bar_prev, v)
    beta = step_beta(ab, ab_prev)
    min_log = posterior_variance(ab, ab_prev).clamp(min=1e-20).log()
    max_log = beta.clamp(min=1e-20).log()
    frac = (v + 1) / 2
    return (frac * max_log + (1 - frac) * min_log).exp()


def guide(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, gamma: float) -> torch.Tensor:
    """Classifier-free guidance (spec Part B 3 and Part A 1.6): eps = eps_u + gamma (eps_c - eps_u).

    Shapes: eps_uncond and eps_cond alike (any shape); gamma 1 is the conditional estimate, 0 the unconditional."""
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


@dataclass
class NoiseEstimate:
    """eps for x_t and, for models that learn it, the raw variance output v in [-1, 1] (learned range)."""

    eps: torch.Tensor
    variance: torch.Tensor | None = None


PredictFn = Callable[[torch.Tensor, int], "torch.Tensor | NoiseEstimate"]
"""predict(x_t, t) -> eps (or a NoiseEstimate with the model's variance), t the integer timestep."""
NoiseFn = Callable[[torch.Tensor], torch.Tensor]
"""noise(x) -> z ~ N(0, I) shaped like x: where the loop's randomness comes from (generator, device)."""
AfterStep = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""after_step(x, alpha_bar_next) -> x, applied after each update (inpainting's projection)."""
OnStep = Callable[[int, int, int, torch.Tensor], None]
"""on_step(k, t, t_next, x): called after the k-th update (k from 0) took x from t to t_next (-1: clean)."""
Variance = str | torch.Tensor
"""A step's noise variance: "beta" (Algorithm B.2's sigma_t^2 = beta_t), "posterior" (beta_tilde) or a
model's learned-range output v in [-1, 1]."""
VARIANCES = ("beta", "posterior")


@torch.no_grad()
def denoise(predict: PredictFn, schedule: DDPMSchedule, x: torch.Tensor, timesteps: Sequence[int],
            noise: NoiseFn | None = None, variance: str = "beta", clip_x0: tuple[float, float] | None = None,
            after_step: AfterStep | None = None, on_step: OnStep | None = None) -> torch.Tensor:
    """The one denoising loop: x at timesteps[0] down to the clean image, one `schedule.step` per timestep.

    Each step goes t -> t' (the next entry of `timesteps`, any stride; after the last, the clean image with
    alpha_bar = 1 and no noise), as Algorithm B.2 (stride 1) and Part A's strided sampler (A.3) do.
    `predict` gives eps (and optionally a learned variance, which then replaces `variance`); `noise(x)`
    draws each step's z after the prediction (None: a deterministic loop); `after_step` changes x after
    every update (inpainting); `on_step` sees every state (trajectories). Returns x (not clamped).
    """
    ts = [int(t) for t in timesteps]
    for k, t in enumerate(ts):
        t_next = ts[k + 1] if k + 1 < len(ts) else -1
        est = predict(x, t)
        if not isinstance(est, NoiseEstimate):
            est = NoiseEstimate(est)
        var = variance if est.variance is None else est.variance
        z = noise(x) if noise is not None and t_next >= 0 else None
        x = schedule.step(est.eps, t, t_next, x, variance=var, noise=z, clip_x0=clip_x0)
        if after_step is not None:
            x = after_step(x, schedule.alpha_bar_at(t_next).to(x.device))
        if on_step is not None:
            on_step(k, t, t_next, x)
    return x


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

    x_{t-1} = posterior_mean(x_t, x0_hat) + sqrt(beta_t) z, z ~ N(0, I) except at the last step:
    `denoise` over every timestep T-1..0 with variance "beta" and z drawn on x's device from `generator`.
    clip_x0 = (lo, hi) clamps x0_hat to the data range first (an option outside the spec: the reference
    DDPM code's clip_denoised, against speckle in the background).
    """
    x = x_T if x_T is not None else torch.randn(shape, generator=generator, device=device)
    frames: list[torch.Tensor] = []
    kept = set(kept_timesteps(schedule.num_timesteps, keep_every))

    def predict(x: torch.Tensor, t: int) -> torch.Tensor:
        return eps_fn(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))

    def noise(x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def keep(k: int, t: int, t_next: int, x: torch.Tensor) -> None:
        if t in kept:
            frames.append(x.detach().cpu())

    x = denoise(predict, schedule, x, range(schedule.num_timesteps - 1, -1, -1), noise, "beta", clip_x0,
                on_step=keep)
    return x, frames


def kept_timesteps(num_timesteps: int, keep_every: int) -> list[int]:
    """The timesteps whose states `sample` keeps: the state after the update at index i is x at t = i
    (t = 0 the clean image; the pure noise it starts from is t = T)."""
    if keep_every <= 0:
        return []
    return [i for i in reversed(range(num_timesteps)) if i % keep_every == 0]


def time_eps_fn(model: nn.Module, schedule: DDPMSchedule) -> EpsFn:
    return lambda x, t: model(x, schedule.time_input(t))


def guided_eps_fn(model: nn.Module, schedule: DDPMSchedule, labels: torch.Tensor, gamma: float) -> EpsFn:
    """Guided noise estimate for the class-conditioned UNet; c = 0 is the unconditional pass."""
    c = one_hot(labels, model.num_classes)

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cc = c.to(device=x.device, dtype=x.dtype)
        both = model(torch.cat([x, x]), schedule.time_input(torch.cat([t, t])), torch.cat([cc, torch.zeros_like(cc)]))
        eps_c, eps_u = both.chunk(2)
        return guide(eps_u, eps_c, gamma)

    return eps_fn
