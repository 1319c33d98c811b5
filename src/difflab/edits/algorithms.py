"""Part A's algorithms on any backend: forward noising, blur and one-step baselines,
the strided iterative denoiser, and the edits built on it (SDEdit, inpainting,
image-to-image, anagrams, hybrids).

Tensors go in and come out in the backend's own value range, shaped (N, C, H, W),
on the CPU. Noise is drawn on the CPU from a seeded generator, so a seed gives
the same result on any device. Every formula is the one in `difflab.ddpm`.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torchvision.transforms.functional import gaussian_blur

from difflab.spec import (HYBRID_KERNEL_SIZE, HYBRID_SIGMA, NUM_INFERENCE_STEPS, PART_A_GUIDANCE, PART_A_I_START, PART_A_SEED,
                          PART_A_SHOW_EVERY)
from difflab.ddpm import AfterStep, DDPMSchedule, add_noise, denoise, predict_x0
from difflab.edits.backend import Backend, num_timesteps
from difflab.edits.guidance import (EstimateFn, anagram_estimate, conditional, get_view, guided,
                                    hybrid_estimate)
from difflab.edits.timesteps import (FORWARD_TIMESTEPS, SDEDIT_I_STARTS, check_i_start, check_timestep,
                                     REFERENCE_STRIDE, inference_timesteps, scale_timestep, strided_timesteps)

SEED = PART_A_SEED
Condition = str | torch.Tensor


@dataclass
class DenoiseResult:
    image: torch.Tensor
    """The final clean image(s), clipped to the backend's value range."""
    frames: list[torch.Tensor] = field(default_factory=list)
    """x after every keep_every-th step (starting with the input), for figures and GIFs."""
    frame_steps: list[int] = field(default_factory=list)
    """The timestep each frame is at (-1: clean)."""
    start: torch.Tensor | None = None
    """The noisy image the loop started from."""


def generator(seed: int = SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(shape: Sequence[int], gen: torch.Generator) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=gen)


def resolve(backend: Backend, cond: Condition | None) -> torch.Tensor:
    """A condition name (prompt, digit) or tensor -> condition tensor; None is the backend's neutral one."""
    if cond is None:
        cond = getattr(backend, "default_condition", "")
    return backend.condition(cond) if isinstance(cond, str) else cond


def estimator(backend: Backend, cond: Condition | None, gamma: float | None) -> EstimateFn:
    """Conditional estimate when gamma is None, else CFG with that gamma."""
    c = resolve(backend, cond)
    return conditional(backend, c) if gamma is None else guided(backend, c, gamma)


def _to(backend: Backend, x: torch.Tensor) -> torch.Tensor:
    return x.to(device=backend.device, dtype=torch.float32)


_SCHEDULES: dict[tuple[int, str], tuple[weakref.ref, DDPMSchedule]] = {}
"""Built once per alphas_cumprod tensor (by identity) and device: building one costs ~10 ms, about what
a whole strided loop on a small model takes."""


def schedule_of(backend: Backend) -> DDPMSchedule:
    """The backend's alpha_bar schedule as a DDPMSchedule (on its device), for `ddpm.denoise`."""
    ac, key = backend.alphas_cumprod, (id(backend.alphas_cumprod), str(backend.device))
    cached = _SCHEDULES.get(key)
    if cached is None or cached[0]() is not ac:
        cached = _SCHEDULES[key] = (weakref.ref(ac), DDPMSchedule.from_alpha_bars(ac).to(backend.device))
    return cached[1]


@torch.no_grad()
def iterative_denoise(backend: Backend, x_t: torch.Tensor, estimate: EstimateFn, timesteps: Sequence[int],
                      i_start: int = 0, gen: torch.Generator | None = None, keep_every: int = PART_A_SHOW_EVERY,
                      after_step: AfterStep | None = None) -> DenoiseResult:
    """The A.3 update from timesteps[i_start] down to the clean image: `ddpm.denoise`, the same loop as
    Part B's Algorithm B.2, over the strided timesteps.

    Each step goes t -> t' (the next strided timestep) with posterior_mean(x_t, x0_hat)
    plus noise of the step's variance (the model's learned range where it has one, else the
    posterior variance); from the last timestep it goes to the clean image (alpha_bar' = 1)
    without noise, as Algorithm B.2 and diffusers do. Noise is drawn on the CPU from `gen`.
    """
    i_start = check_i_start(i_start, timesteps)
    gen = gen or generator()
    T = num_timesteps(backend)
    ts = [check_timestep(t, T) for t in timesteps[i_start:]]
    x = _to(backend, x_t)
    frames, frame_steps = [x.cpu()], [ts[0]]

    def keep(k: int, t: int, t_next: int, x: torch.Tensor) -> None:
        if t_next < 0 or (keep_every and (k + 1) % keep_every == 0):
            frames.append(x.cpu())
            frame_steps.append(t_next)

    x = denoise(estimate, schedule_of(backend), x, ts, noise=lambda x: randn(x.shape, gen).to(x.device),
                variance="posterior", after_step=after_step, on_step=keep)
    image = x.cpu().clamp(*backend.value_range)
    return DenoiseResult(image=image, frames=frames, frame_steps=frame_steps, start=frames[0])


def _noise_to(backend: Backend, image: torch.Tensor, t: int, gen: torch.Generator) -> torch.Tensor:
    return add_noise(image.float().cpu(), backend.alphas_cumprod[t], randn(image.shape, gen))


def forward_process(backend: Backend, image: torch.Tensor, timesteps: Sequence[int] | None = None,
                    seed: int = SEED) -> dict[int, torch.Tensor]:
    """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps at each t (default 250/500/750 scaled to the model's T)."""
    T = num_timesteps(backend)
    timesteps = timesteps or [scale_timestep(t, T) for t in FORWARD_TIMESTEPS]
    gen = generator(seed)
    return {check_timestep(t, T): _noise_to(backend, image, t, gen) for t in timesteps}


def best_blur(noisy: torch.Tensor, clean: torch.Tensor,
              sigmas: Sequence[float] = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)) -> tuple[torch.Tensor, list[float]]:
    """The classical baseline: for each noisy image, the Gaussian blur whose output is closest (MSE) to clean.

    Returns the blurred images and the chosen sigma per image (kernel = 2 ceil(3 sigma) + 1, capped to fit).
    """
    if noisy.shape != clean.shape:
        raise ValueError(f"noisy {tuple(noisy.shape)} and clean {tuple(clean.shape)} differ; pass matching batches")
    limit = min(noisy.shape[-2:]) - 1
    best, best_err, chosen = noisy.clone(), torch.full((noisy.shape[0],), float("inf")), [0.0] * noisy.shape[0]
    for s in sigmas:
        k = min(2 * int(-(-3 * s // 1)) + 1, limit if limit % 2 else limit - 1)
        out = gaussian_blur(noisy, [k, k], [s, s])
        err = ((out - clean) ** 2).flatten(1).mean(1)
        for n in range(noisy.shape[0]):
            if err[n] < best_err[n]:
                best[n], best_err[n], chosen[n] = out[n], err[n], float(s)
    return best, chosen


@torch.no_grad()
def one_step_denoise(backend: Backend, noisy: dict[int, torch.Tensor], cond: Condition | None = None,
                     gamma: float | None = None) -> dict[int, torch.Tensor]:
    """x0_hat = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t) from one noise estimate per t."""
    estimate = estimator(backend, cond, gamma)
    out = {}
    for t, x in noisy.items():
        t = check_timestep(t, num_timesteps(backend))
        ab = backend.alphas_cumprod[t]
        out[t] = predict_x0(_to(backend, x), estimate(_to(backend, x), t).eps, ab.to(backend.device)).cpu()
    return out


def denoise_noisy_image(backend: Backend, image: torch.Tensor, i_start: int = PART_A_I_START, cond: Condition | None = None,
                        gamma: float | None = None, seed: int = SEED, keep_every: int = PART_A_SHOW_EVERY,
                        stride: int = REFERENCE_STRIDE) -> DenoiseResult:
    """Section 1.4: noise image to timesteps[i_start], then denoise iteratively (result.start is the noisy input)."""
    ts = strided_timesteps(num_timesteps(backend), reference_stride=stride)
    i_start = check_i_start(i_start, ts)
    gen = generator(seed)
    x_t = _noise_to(backend, image, ts[i_start], gen)
    return iterative_denoise(backend, x_t, estimator(backend, cond, gamma), ts, i_start, gen, keep_every)



@dataclass
class Restoration:
    """Section 1.4's comparison at one i_start: the iterative and the one-step estimate of the same noisy image."""

    i_start: int
    t_start: int
    iterative: DenoiseResult
    one_step: torch.Tensor
    mse_iterative: float
    mse_one_step: float


def compare_at(backend: Backend, image: torch.Tensor, i_start: int, seed: int = SEED, keep_every: int = PART_A_SHOW_EVERY,
               stride: int = REFERENCE_STRIDE) -> Restoration:
    """Noise image to strided step i_start; denoise it iteratively (A.3) and in one step (1.3); MSE of each
    to the original (mean over pixels, in the backend's value range)."""
    ts = strided_timesteps(num_timesteps(backend), reference_stride=stride)
    res = denoise_noisy_image(backend, image, i_start, seed=seed, keep_every=keep_every, stride=stride)
    t = int(ts[i_start])
    one = one_step_denoise(backend, {t: res.start})[t]
    mse = lambda x: float(((x.cpu() - image.cpu()) ** 2).mean())  # noqa: E731
    return Restoration(i_start, t, res, one, mse(res.image), mse(one))


def first_restoring(backend: Backend, image: torch.Tensor, i_start: int, seed: int = SEED, keep_every: int = PART_A_SHOW_EVERY,
                    stride: int = REFERENCE_STRIDE) -> Restoration | None:
    """The noisiest strided step after i_start from which the iterative loop restores the image rather than
    generates another one: the first i > i_start whose iterative MSE is at most the one-step MSE (one-step
    denoising averages the images the noise could hide, so a loop that lands on a different plausible image
    scores worse than it). None when no later step does."""
    ts = strided_timesteps(num_timesteps(backend), reference_stride=stride)
    for i in range(check_i_start(i_start, ts) + 1, len(ts)):
        r = compare_at(backend, image, i, seed, keep_every, stride)
        if r.mse_iterative <= r.mse_one_step:
            return r
    return None


def sample(backend: Backend, cond: Condition | None = None, num: int = 1, gamma: float | None = PART_A_GUIDANCE,
           seed: int = SEED, timesteps: Sequence[int] | None = None, keep_every: int = PART_A_SHOW_EVERY,
           stride: int = REFERENCE_STRIDE) -> DenoiseResult:
    """Images from pure noise (i_start = 0); gamma=None samples without guidance (section 1.5)."""
    ts = list(timesteps) if timesteps is not None else strided_timesteps(num_timesteps(backend),
                                                                         reference_stride=stride)
    gen = generator(seed)
    x_T = randn((num, *backend.image_shape), gen)
    return iterative_denoise(backend, x_T, estimator(backend, cond, gamma), ts, 0, gen, keep_every)


def sample_at_steps(backend: Backend, conds: Sequence[Condition], steps: Sequence[int] = NUM_INFERENCE_STEPS,
                    gamma: float | None = PART_A_GUIDANCE, seed: int = SEED) -> dict[int, torch.Tensor]:
    """Section 0: one sample per condition at each num_inference_steps; {steps: (len(conds), C, H, W)}."""
    T = num_timesteps(backend)
    out = {}
    for n in steps:
        ts = inference_timesteps(T, n)
        out[n] = torch.cat([sample(backend, c, 1, gamma, seed, ts, keep_every=0).image for c in conds])
    return out


def sdedit(backend: Backend, image: torch.Tensor, cond: Condition | None = None,
           i_starts: Sequence[int] = SDEDIT_I_STARTS, gamma: float | None = PART_A_GUIDANCE,
           seed: int = SEED, stride: int = REFERENCE_STRIDE) -> dict[int, torch.Tensor]:
    """Noise image to timesteps[i_start] and denoise with CFG, for each i_start: {i_start: edited}.

    With a condition other than the image's own content this is text-conditional image-to-image.
    """
    ts = strided_timesteps(num_timesteps(backend), reference_stride=stride)
    estimate = estimator(backend, cond, gamma)
    out = {}
    for i_start in i_starts:
        i_start = check_i_start(i_start, ts)
        gen = generator(seed)
        x_t = _noise_to(backend, image, ts[i_start], gen)
        out[i_start] = iterative_denoise(backend, x_t, estimate, ts, i_start, gen, keep_every=0).image
    return out


image_to_image = sdedit
"""Section 1.7.3: SDEdit guided by another prompt is the same computation."""


def inpaint(backend: Backend, image: torch.Tensor, mask: torch.Tensor, cond: Condition | None = None,
            gamma: float | None = PART_A_GUIDANCE, seed: int = SEED, keep_every: int = PART_A_SHOW_EVERY,
            stride: int = REFERENCE_STRIDE) -> DenoiseResult:
    """Fill the mask (1 = new content) from pure noise; after every step
    x_t <- m x_t + (1 - m) forward(x_orig, t), so the rest ends equal to the original."""
    if mask.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"mask is {tuple(mask.shape[-2:])} but the image is {tuple(image.shape[-2:])}; "
                         "make them the same size")
    ts = strided_timesteps(num_timesteps(backend), reference_stride=stride)
    gen = generator(seed)
    orig, m = _to(backend, image), _to(backend, mask)

    def project(x: torch.Tensor, ab_next: torch.Tensor) -> torch.Tensor:
        return m * x + (1 - m) * add_noise(orig, ab_next, randn(x.shape, gen).to(x.device))

    x_T = project(_to(backend, randn(image.shape, gen)), backend.alphas_cumprod[ts[0]].to(backend.device))
    return iterative_denoise(backend, x_T, estimator(backend, cond, gamma), ts, 0, gen, keep_every, project)


def anagram(backend: Backend, cond1: Condition, cond2: Condition, view: str = "flip", gamma: float | None = PART_A_GUIDANCE,
            num: int = 1, seed: int = SEED, stride: int = REFERENCE_STRIDE) -> DenoiseResult:
    """A visual anagram: reads as cond1, and as cond2 after `view` (flip, rot90, rot180)."""
    get_view(view)
    estimate = anagram_estimate(estimator(backend, cond1, gamma), estimator(backend, cond2, gamma), view)
    gen = generator(seed)
    ts = strided_timesteps(num_timesteps(backend), reference_stride=stride)
    return iterative_denoise(backend, randn((num, *backend.image_shape), gen), estimate, ts, 0, gen)


def hybrid(backend: Backend, cond_low: Condition, cond_high: Condition, gamma: float | None = PART_A_GUIDANCE,
           kernel_size: int = HYBRID_KERNEL_SIZE, sigma: float = HYBRID_SIGMA, num: int = 1, seed: int = SEED,
           stride: int = REFERENCE_STRIDE) -> DenoiseResult:
    """A hybrid image: cond_low's low frequencies (seen from afar) with cond_high's high frequencies."""
    estimate = hybrid_estimate(estimator(backend, cond_low, gamma), estimator(backend, cond_high, gamma),
                               kernel_size, sigma)
    gen = generator(seed)
    ts = strided_timesteps(num_timesteps(backend), reference_stride=stride)
    return iterative_denoise(backend, randn((num, *backend.image_shape), gen), estimate, ts, 0, gen)
