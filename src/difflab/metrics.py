"""Quality metrics for the MNIST models, as plain PyTorch: denoiser MSE/PSNR, class agreement of
conditioned samples, and the Frechet distance in the judge's feature space (the judge, an independent
classifier trained on real digits only, is difflab.judge).

Everything returns tensors, floats and dicts; logging them is the caller's business (tracking.py).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from difflab.ddpm import add_gaussian_noise
from difflab.judge import Judge, _as_input, judge_features, judge_predict

DenoiseFn = Callable[[torch.Tensor], torch.Tensor]


def mse(pred: torch.Tensor, target: torch.Tensor) -> float:
    return F.mse_loss(pred.double(), target.double()).item()


def psnr_from_mse(mse_value: float, data_range: float = 1.0) -> float:
    """PSNR in dB for images spanning data_range ([0, 1] images: 1); infinite for a perfect match."""
    return math.inf if mse_value == 0 else 10 * math.log10(data_range ** 2 / mse_value)


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> float:
    return psnr_from_mse(mse(pred, target), data_range)


@torch.no_grad()
def denoiser_metrics(denoise_fn: DenoiseFn, images: torch.Tensor, sigmas: list[float] | float, seed: int = 0,
                     batch_size: int = 500, device: str | torch.device = "cpu") -> dict[float, dict[str, float]]:
    """Test MSE and PSNR of x against D(x + sigma eps) for each sigma, with seeded noise.

    The PSNR is that of the pooled MSE over all images (not a mean of per-image PSNRs), so it
    ranks models exactly as the MSE does. The output is scored as returned, unclipped.
    Noise is drawn on the CPU, so the numbers do not depend on the device the model runs on.
    """
    x = _as_input(images)
    results: dict[float, dict[str, float]] = {}
    for sigma in ([sigmas] if isinstance(sigmas, (int, float)) else sigmas):
        generator = torch.Generator().manual_seed(seed)
        total = 0.0
        for i in range(0, len(x), batch_size):
            batch = x[i:i + batch_size]
            eps = torch.randn(batch.shape, generator=generator)
            out = denoise_fn(add_gaussian_noise(batch, sigma, eps).to(device)).detach().cpu()
            total += F.mse_loss(out.double(), batch.double(), reduction="sum").item()
        err = total / x.numel()
        results[float(sigma)] = {"mse": err, "psnr": psnr_from_mse(err)}
    return results


def class_agreement(judge: Judge, samples: torch.Tensor, requested_labels: torch.Tensor) -> dict:
    """How often the judge sees the digit that was asked for, and how sure it is.

    Returns {"agreement", "confidence", "per_digit": {digit: {"agreement", "confidence", "count"}}};
    confidence is the mean probability the judge gives the requested digit (not its top class),
    so a sample that looks like nothing scores low even when its argmax happens to be right.
    """
    requested = requested_labels.long().cpu()
    probs = judge_predict(judge, samples)
    hit = (probs.argmax(dim=1) == requested).double()
    conf = probs.double().gather(1, requested[:, None])[:, 0]
    per_digit = {
        int(d): {"agreement": hit[requested == d].mean().item(), "confidence": conf[requested == d].mean().item(),
                 "count": int((requested == d).sum())}
        for d in requested.unique().tolist()
    }
    return {"agreement": hit.mean().item(), "confidence": conf.mean().item(), "per_digit": per_digit}


def _psd_sqrt(mat: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix; round-off negative eigenvalues are set to zero."""
    vals, vecs = np.linalg.eigh((mat + mat.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(feats_a: torch.Tensor | np.ndarray, feats_b: torch.Tensor | np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N_a, F) and (N_b, F).

    ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)), in float64. The trace term
    is computed as the sum of square roots of the eigenvalues of the symmetric PSD matrix
    S_a^(1/2) S_b S_a^(1/2), which has the same spectrum as S_a S_b but never goes complex.
    """
    a = np.asarray(feats_a.detach().cpu() if isinstance(feats_a, torch.Tensor) else feats_a, dtype=np.float64)
    b = np.asarray(feats_b.detach().cpu() if isinstance(feats_b, torch.Tensor) else feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (N >= 2, F) feature arrays of equal F, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _psd_sqrt(cov_a)
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_sqrt = np.sqrt(np.clip(cross, 0, None)).sum()
    dist = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)
    return max(dist, 0.0)


def frechet_vs_real(judge: Judge, samples: torch.Tensor, real_train: torch.Tensor, real_heldout: torch.Tensor,
                    seed: int = 0) -> dict[str, float]:
    """Frechet distance of samples to real held-out digits, beside the floor real train vs held-out.

    The floor uses as many train images as there are samples, because the estimate's bias
    grows as the set shrinks: only a floor of the same size says what "as good as real" means.
    """
    n = min(len(samples), len(real_train))
    pick = torch.randperm(len(real_train), generator=torch.Generator().manual_seed(seed))[:n]
    held = judge_features(judge, real_heldout)
    return {
        "frechet": frechet_distance(judge_features(judge, samples), held),
        "frechet_real_floor": frechet_distance(judge_features(judge, real_train[pick]), held),
        "num_samples": float(len(samples)),
    }
