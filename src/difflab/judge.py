"""The judge: an independent digit classifier, its training loop, and its cache file.

It is trained on real digits only, never on anything a diffusion model produced, so its verdicts on samples
are an outside opinion (difflab.metrics turns them into class agreement and Frechet distances). Plain
PyTorch: it takes a `JudgeSettings` (the fields of difflab.config.JudgeConfig, where the defaults live).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from difflab.files import atomic_torch_save, torch_load
from difflab.unet import NUM_CLASSES, to_float


@dataclass(frozen=True)
class JudgeSettings:
    """The judge's network, training and augmentation settings; each field is documented on
    difflab.config.JudgeConfig (whose defaults reach >= 97 % held-out accuracy on the bundled digits)."""

    width: int
    feature_dim: int
    dropout: float
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    max_shift: float
    max_rotation_deg: float
    corrupt_prob: float
    max_noise: float
    max_offset: float
    seed: int
    num_threads: int
    eval_batch_size: int


def settings(cfg: Any) -> JudgeSettings:
    """A JudgeSettings from one, or from anything with its fields (the typed JudgeConfig)."""
    if isinstance(cfg, JudgeSettings):
        return cfg
    return JudgeSettings(**{f.name: getattr(cfg, f.name) for f in fields(JudgeSettings)})


class Judge(nn.Module):
    """Two conv stages (28 -> 14 -> 7) and an MLP head; `features` is the penultimate layer."""

    def __init__(self, cfg: "JudgeSettings"):
        super().__init__()
        cfg = settings(cfg)
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


def _augment(x: torch.Tensor, cfg: JudgeSettings, generator: torch.Generator) -> torch.Tensor:
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


def corrupt(x: torch.Tensor, cfg: JudgeSettings, generator: torch.Generator) -> torch.Tensor:
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


def train_judge(images: torch.Tensor, labels: torch.Tensor, cfg: JudgeSettings) -> Judge:
    """Train the judge from a fixed seed on real digits; returns it in eval mode on the CPU.

    images: uint8 (N, 28, 28) or float (N, 1, 28, 28) in [0, 1]; labels (N,) digits 0..9. Its own short loop, not
    train.fit's: AdamW with a one-cycle learning rate stepped every batch, and augmented batches (_augment)."""
    cfg = settings(cfg)
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
    return atomic_torch_save({"config": asdict(judge.cfg), "state_dict": judge.state_dict()}, path,
                             "judge cache")


def load_judge(path: str | Path) -> Judge:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"judge checkpoint {path} not found; train one with train_judge and save_judge")
    blob = torch_load(path, "judge cache", "delete it and rerun to retrain the judge", map_location="cpu",
                      weights_only=True)
    judge = Judge(JudgeSettings(**blob["config"]))
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
