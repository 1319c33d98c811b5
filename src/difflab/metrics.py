"""Quality metrics for the MNIST models, as plain PyTorch: an independent judge classifier,
denoiser MSE/PSNR, class agreement of conditioned samples, and the Frechet distance in the
judge's feature space.

The judge is trained on real digits only, never on anything a diffusion model produced, so
its verdicts on samples are an outside opinion. Everything returns tensors, floats and dicts;
logging them is the caller's business (tracking.py).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from difflab.config import JudgeConfig
from difflab.data import to_float
from difflab.files import atomic_torch_save, torch_load
from difflab.ddpm import add_gaussian_noise
from difflab.unet import NUM_CLASSES

DenoiseFn = Callable[[torch.Tensor], torch.Tensor]


class Judge(nn.Module):
    """Two conv stages (28 -> 14 -> 7) and an MLP head; `features` is the penultimate layer."""

    def __init__(self, cfg: JudgeConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *conv(1, w), *conv(w, w), nn.MaxPool2d(2),
            *conv(w, 2 * w), *conv(2 * w, 2 * w), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * w * 7 * 7, cfg.feature_dim), nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.feature_dim, NUM_CLASSES))
        self.train_seconds: float = 0.0
        """Wall time train_judge spent, for logging beside the accuracy."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _as_input(images: torch.Tensor) -> torch.Tensor:
    """Accept uint8 (N, 28, 28) as stored, or float (N, 1, 28, 28) in [0, 1] as sampled."""
    if images.dtype == torch.uint8:
        return to_float(images)
    x = images.float()
    return x.unsqueeze(1) if x.dim() == 3 else x


def _augment(x: torch.Tensor, cfg: JudgeConfig, generator: torch.Generator) -> torch.Tensor:
    """Small random shifts and rotations, so the judge also accepts digits not centred like MNIST's."""
    n, _, h, w = x.shape
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(cfg.max_rotation_deg)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * cfg.max_shift
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([
        torch.stack([cos, -sin, shift[:, 0] * 2 / w], dim=1),
        torch.stack([sin, cos, shift[:, 1] * 2 / h], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    return corrupt(x, cfg, generator)


def corrupt(x: torch.Tensor, cfg: JudgeConfig, generator: torch.Generator) -> torch.Tensor:
    """The defects samples show, on a random cfg.corrupt_prob share of x: clipped noise of a random
    sigma <= cfg.max_noise and a grey offset <= cfg.max_offset, each image its own."""
    n = x.shape[0]
    hit = (torch.rand(n, 1, 1, 1, generator=generator) < cfg.corrupt_prob).float()
    sigma = torch.rand(n, 1, 1, 1, generator=generator) * cfg.max_noise
    offset = torch.rand(n, 1, 1, 1, generator=generator) * cfg.max_offset
    noisy = x + sigma * torch.randn(x.shape, generator=generator) + offset
    return (hit * noisy + (1 - hit) * x).clamp(0, 1)


HELDOUT_CORRUPTION_SIGMA = 0.2
"""The corruption the judge's robustness is reported at: clipped noise of sigma 0.2 on held-out digits."""


def judge_accuracy_corrupted(judge: "Judge", images: torch.Tensor, labels: torch.Tensor,
                             sigma: float = HELDOUT_CORRUPTION_SIGMA, seed: int = 0) -> float:
    """Held-out accuracy on digits with clipped Gaussian noise (a fixed draw), the defect samples show most."""
    x = _as_input(images)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return judge_accuracy(judge, (x + sigma * eps).clamp(0, 1), labels)


def train_judge(images: torch.Tensor, labels: torch.Tensor, cfg: JudgeConfig | None = None) -> Judge:
    """Train the judge from a fixed seed on real digits; returns it in eval mode on the CPU."""
    cfg = cfg or JudgeConfig()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(min(cfg.num_threads, previous_threads))
    try:
        torch.manual_seed(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        x, y = _as_input(images), labels.long()
        judge = Judge(cfg)
        steps_per_epoch = math.ceil(len(y) / cfg.batch_size)
        opt = torch.optim.AdamW(judge.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, epochs=cfg.epochs,
                                                    steps_per_epoch=steps_per_epoch)
        judge.train()
        start = time.perf_counter()
        for _ in range(cfg.epochs):
            perm = torch.randperm(len(y), generator=generator)
            for i in range(steps_per_epoch):
                idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
                loss = F.cross_entropy(judge(_augment(x[idx], cfg, generator)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        judge.train_seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous_threads)
    return judge.eval()


def save_judge(judge: Judge, path: str | Path) -> Path:
    """Config and weights in one file, so load_judge needs nothing else."""
    return atomic_torch_save({"config": judge.cfg.model_dump(), "state_dict": judge.state_dict()}, path,
                             "judge cache")


def load_judge(path: str | Path) -> Judge:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"judge checkpoint {path} not found; train one with train_judge and save_judge")
    blob = torch_load(path, "judge cache", "delete it and rerun to retrain the judge", map_location="cpu",
                      weights_only=True)
    judge = Judge(JudgeConfig(**blob["config"]))
    judge.load_state_dict(blob["state_dict"])
    return judge.eval()


@torch.no_grad()
def _batched(judge: Judge, images: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    judge.eval()
    x = _as_input(images)
    device = next(judge.parameters()).device
    bs = judge.cfg.eval_batch_size
    return torch.cat([fn(x[i:i + bs].to(device)).cpu() for i in range(0, len(x), bs)])


def judge_predict(judge: Judge, images: torch.Tensor) -> torch.Tensor:
    """Class probabilities (N, 10)."""
    return _batched(judge, images, lambda x: judge(x).softmax(dim=1))


def judge_features(judge: Judge, images: torch.Tensor) -> torch.Tensor:
    """Penultimate-layer activations (N, feature_dim), the space of the Frechet distance."""
    return _batched(judge, images, judge.features)


def judge_accuracy(judge: Judge, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (judge_predict(judge, images).argmax(dim=1) == labels.long().cpu()).float().mean().item()


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
