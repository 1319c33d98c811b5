"""Noise estimates built from a backend: conditional, CFG, visual anagrams, hybrids.

Each builder returns an EstimateFn(x_t, t) -> NoiseEstimate, so the one denoising
loop in `algorithms.py` runs every edit. The variance (where the model predicts
one) always comes from conditional passes, as the spec asks for CFG.
"""

from __future__ import annotations

from typing import Callable

import torch
from torchvision.transforms.functional import gaussian_blur

from difflab.spec import HYBRID_KERNEL_SIZE, HYBRID_SIGMA
from difflab.ddpm import guide
from difflab.edits.backend import Backend, NoiseEstimate

EstimateFn = Callable[[torch.Tensor, int], NoiseEstimate]

View = Callable[[torch.Tensor], torch.Tensor]
VIEWS: dict[str, tuple[View, View]] = {
    "identity": (lambda x: x, lambda x: x),
    "flip": (lambda x: torch.flip(x, [-2]), lambda x: torch.flip(x, [-2])),
    "rot90": (lambda x: torch.rot90(x, 1, [-2, -1]), lambda x: torch.rot90(x, -1, [-2, -1])),
    "rot180": (lambda x: torch.rot90(x, 2, [-2, -1]), lambda x: torch.rot90(x, -2, [-2, -1])),
}
"""name -> (view, inverse view); "flip" turns the image upside down, as in the course."""


def get_view(name: str) -> tuple[View, View]:
    if name not in VIEWS:
        raise ValueError(f"unknown view {name!r}; choose one of {sorted(VIEWS)}")
    return VIEWS[name]


def _batch(cond: torch.Tensor, n: int) -> torch.Tensor:
    return cond.expand(n, *cond.shape[1:])


def conditional(backend: Backend, cond: torch.Tensor) -> EstimateFn:
    """The plain conditional estimate (no guidance)."""
    return lambda x, t: backend.predict(x, t, _batch(cond, x.shape[0]))


def guided(backend: Backend, cond: torch.Tensor, gamma: float, uncond: torch.Tensor | None = None) -> EstimateFn:
    """CFG estimate eps_u + gamma (eps_c - eps_u), both passes in one batch; variance from the conditional pass."""
    uncond = backend.uncond() if uncond is None else uncond

    def estimate(x: torch.Tensor, t: int) -> NoiseEstimate:
        b = x.shape[0]
        both = backend.predict(torch.cat([x, x]), t, torch.cat([_batch(cond, b), _batch(uncond, b)]))
        eps_c, eps_u = both.eps.chunk(2)
        var = None if both.variance is None else both.variance.chunk(2)[0]
        return NoiseEstimate(guide(eps_u, eps_c, gamma), var)

    return estimate


def _mean_var(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return None if a is None or b is None else (a + b) / 2


def anagram_estimate(first: EstimateFn, second: EstimateFn, view: str = "flip") -> EstimateFn:
    """eps = (eps1(x) + view^-1(eps2(view(x)))) / 2: the image reads as prompt 1, and as prompt 2 in the view."""
    fwd, inv = get_view(view)

    def estimate(x: torch.Tensor, t: int) -> NoiseEstimate:
        e1, e2 = first(x, t), second(fwd(x), t)
        v2 = None if e2.variance is None else inv(e2.variance)
        return NoiseEstimate((e1.eps + inv(e2.eps)) / 2, _mean_var(e1.variance, v2))

    return estimate


def lowpass(x: torch.Tensor, kernel_size: int = HYBRID_KERNEL_SIZE, sigma: float = HYBRID_SIGMA) -> torch.Tensor:
    """Gaussian blur (reflect padding), the hybrid images' low-pass filter."""
    return gaussian_blur(x, [kernel_size, kernel_size], [sigma, sigma])


def highpass(x: torch.Tensor, kernel_size: int = HYBRID_KERNEL_SIZE, sigma: float = HYBRID_SIGMA) -> torch.Tensor:
    """x - lowpass(x), so lowpass + highpass gives x back exactly."""
    return x - lowpass(x, kernel_size, sigma)


def hybrid_estimate(low: EstimateFn, high: EstimateFn, kernel_size: int = HYBRID_KERNEL_SIZE, sigma: float = HYBRID_SIGMA) -> EstimateFn:
    """eps = lowpass(eps1) + highpass(eps2): prompt 1 from afar, prompt 2 up close."""

    def estimate(x: torch.Tensor, t: int) -> NoiseEstimate:
        e1, e2 = low(x, t), high(x, t)
        eps = lowpass(e1.eps, kernel_size, sigma) + highpass(e2.eps, kernel_size, sigma)
        return NoiseEstimate(eps, _mean_var(e1.variance, e2.variance))

    return estimate
