"""One training loop for all three networks (`fit`), read straight down as DiT's and nanoGPT's: shuffled
batches from tensors already on the device; zero_grad, forward and loss, backward, Adam step; ExponentialLR
stepped once per epoch; a checkpoint after every checkpoint epoch, and resume from the last one (so a
retried task picks up where it stopped). The CUDA-graph / compiled step is fastpath.TrainStep, an optional
replacement of the plain step. Plain PyTorch: fit takes `TrainSettings` and `TrainInputs` dataclasses.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from difflab import fastpath
from difflab.spec import COURSE_TRAIN_IMAGES
from difflab.files import CorruptFileError, atomic_torch_save, set_aside, torch_load
from difflab.unet import build_model

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
"""loss_fn(model, images, labels, generator) -> scalar loss."""


@dataclass(frozen=True)
class TrainingPlan:
    """How many epochs a training really runs, after matching the course's optimizer steps."""

    epochs: int
    steps_per_epoch: int
    snapshot_epochs: list[int]
    lr_gamma: float
    epoch_scale: float
    """epochs / configured epochs: 1 unless the course's step count was matched on less data."""


def plan_training(epochs: int, batch_size: int, snapshot_epochs: list[int], n_train: int,
                  match_course_steps: bool, lr_final_factor: float = 1.0) -> TrainingPlan:
    """The course counts epochs of 60,000 images; on fewer images, keep its optimizer steps when asked."""
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    scale = 1.0
    if match_course_steps and n_train < COURSE_TRAIN_IMAGES:
        course_steps = epochs * math.ceil(COURSE_TRAIN_IMAGES / batch_size)
        new_epochs = math.ceil(course_steps / steps_per_epoch)
        scale = new_epochs / epochs
        epochs = new_epochs
    snaps = sorted({min(epochs, max(1, round(e * scale))) for e in snapshot_epochs if e >= 1})
    gamma = lr_final_factor ** (1.0 / epochs)
    return TrainingPlan(epochs=epochs, steps_per_epoch=steps_per_epoch, snapshot_epochs=snaps,
                        lr_gamma=gamma, epoch_scale=scale)


@dataclass
class EpochResult:
    epoch: int  # 1-based
    step_losses: list[float]
    lr: float
    global_step: int
    checkpoint: Path | None = None

    @property
    def mean_loss(self) -> float:
        return sum(self.step_losses) / max(1, len(self.step_losses))


class EMA:
    """An exponential moving average of a network's weights, the copy a DDPM samples from.

    After step n (1-based) each parameter p_ema <- d p_ema + (1 - d) p with d = min(decay, (1 + n) / (10 + n)):
    the warm-up keeps the random initial weights from lingering in a short training. Buffers
    (BatchNorm's running statistics) are copied, not averaged."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def factor(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.factor(step)
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1.0 - d)

    @torch.no_grad()
    def copy_buffers(self, model: nn.Module) -> None:
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)


@dataclass
class TrainResult:
    model: nn.Module
    losses: list[float] = field(default_factory=list)
    resumed_from_epoch: int = 0


def pick_device(name: str = "auto", cpu_threads: int | None = None) -> torch.device:
    """The device to use; on a CPU, optionally cap torch's threads.

    Small batches (Part A, tiny runs) are many times faster on one thread when the cores
    are shared: OpenMP's spinning threads otherwise wait on each other.
    """
    if cpu_threads is not None:
        torch.set_num_threads(cpu_threads)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for but CUDA is not available; use device=cpu or auto")
    return device


def device_name(device: torch.device) -> str:
    """What runs are tagged with: the GPU's model, or cpu."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def save_checkpoint(path: Path, model: nn.Module, kind: str, extra: dict | None = None, **state) -> Path:
    """A self-describing checkpoint: enough to rebuild the model without its config."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"kind": kind, "init_kwargs": model.init_kwargs(), "state_dict": model.state_dict(),
               "extra": extra or {}, **state}
    return atomic_torch_save(payload, path, "checkpoint")


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a network from a checkpoint written by `save_checkpoint`; returns (model in eval mode, extra)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found; train a model first (difflab part-b) or give its path")
    payload = torch_load(path, "checkpoint", "give another checkpoint, or retrain it (difflab part-b --force)",
                         map_location=device, weights_only=False)
    model = build_model(payload["kind"], **payload["init_kwargs"])
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), payload.get("extra", {})


def load_resume_state(last: Path, device: torch.device | str = "cpu") -> dict | None:
    """The resume checkpoint, or None when there is none; a corrupt one is set aside and training starts over."""
    if not last.exists():
        return None
    try:
        return torch_load(last, "resume checkpoint", map_location=device, weights_only=False)
    except CorruptFileError as exc:
        set_aside(last, str(exc))
        return None


def resume_epoch(last: Path) -> int:
    """The epoch a resume checkpoint reached (0 when there is none, or it was corrupt and set aside)."""
    state = load_resume_state(last)
    return int(state["epoch"]) if state else 0


def checkpoint_epochs(plan: TrainingPlan) -> set[int]:
    """One checkpoint per configured (course) epoch: every epoch unless epochs were scaled up."""
    every = max(1, math.ceil(plan.epoch_scale))
    return {e for e in range(1, plan.epochs + 1) if e % every == 0} | {plan.epochs}


@dataclass(frozen=True)
class TrainSettings:
    """What a training run is, as plain values (built at the edge from the stage's TrainConfig: stages.py's
    `Stage.train_settings`)."""

    kind: str
    """The network (unet.MODEL_CLASSES key): unconditional, time or class."""
    model_kwargs: dict
    """Its constructor's arguments, e.g. {"hidden": 64}."""
    plan: TrainingPlan
    lr: float
    """Adam's learning rate (the spec's: 1e-4 denoiser, 1e-3 DDPMs); decayed by plan.lr_gamma every epoch."""
    batch_size: int
    seed: int = 0
    device: torch.device | str = "cpu"
    fast: fastpath.Speed | None = None
    """The speed levers (None or not enabled: the plain loop)."""
    ema_decay: float = 0.0
    """> 0: the network handed to on_epoch_end, saved in the epoch checkpoints and returned is the weights'
    moving average (EMA)."""


@dataclass
class TrainInputs:
    """What a training run is given: the data, the loss, and where its epochs go."""

    images: torch.Tensor
    """(N, 1, 28, 28) float in [0, 1]."""
    labels: torch.Tensor
    """(N,) digits 0..9 (ignored by the losses that do not condition on them)."""
    loss_fn: LossFn
    checkpoint_dir: Path | None = None
    """last.pt (resume) and epoch_NNNN.pt go here; None: no checkpoints, no resume."""
    on_epoch_end: Callable[[nn.Module, EpochResult], None] | None = None
    extra: dict | None = None
    """Stored in every checkpoint (the stage's config and schedule), for load_model's caller."""


def fit(settings: TrainSettings, inputs: TrainInputs) -> TrainResult:
    """Train from scratch or from checkpoint_dir/last.pt: shuffled batches, Adam, ExponentialLR per epoch.

    The optimizer step is the spec's plain one below (zero_grad, forward and loss, backward, step); with
    `settings.fast` a CUDA-graph replay or a compiled network (fastpath.TrainStep) may take a full batch's
    step instead, computing the same step. Per-step losses stay on the device and reach the host once per
    epoch. Raises ValueError on an empty training set."""
    s, kind, plan, batch_size = settings, settings.kind, settings.plan, settings.batch_size
    device = torch.device(s.device)
    torch.manual_seed(s.seed)
    levers = fastpath.Levers.resolve(s.fast, device)
    model = fastpath.prepare_model(build_model(kind, **s.model_kwargs).to(device), levers)
    ema = EMA(model, s.ema_decay) if s.ema_decay > 0 else None
    optimizer = fastpath.make_optimizer(model, s.lr, levers, device)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=plan.lr_gamma)
    gen = torch.Generator(device=device).manual_seed(s.seed)
    shuffle_gen = torch.Generator().manual_seed(s.seed)
    images, labels, loss_fn = inputs.images.to(device), inputs.labels.to(device), inputs.loss_fn
    n = images.shape[0]
    if n == 0:
        raise ValueError("no training images; check the data stage's output")

    last = inputs.checkpoint_dir / "last.pt" if inputs.checkpoint_dir else None
    start_epoch, losses = _resume(last, device, model, optimizer, scheduler, gen, shuffle_gen, ema)
    fastpath.after_optimizer_load(optimizer, levers, device)
    captured_lrs = [g["lr"] for g in optimizer.param_groups]
    fast_step = fastpath.TrainStep(model, optimizer, loss_fn, gen, levers, device, batch_size)

    ckpt_epochs = checkpoint_epochs(plan)
    step = start_epoch * plan.steps_per_epoch
    with fastpath.cuda_backends(levers):
        for epoch in range(start_epoch + 1, plan.epochs + 1):
            model.train()
            perm = torch.randperm(n, generator=shuffle_gen).to(device)
            lr_now = float(optimizer.param_groups[0]["lr"])
            step_losses = torch.empty(math.ceil(n / batch_size), device=device)
            for j, i in enumerate(range(0, n, batch_size)):
                idx = perm[i:i + batch_size]
                x, y = fastpath.to_layout(images[idx], levers), labels[idx]
                if fast_step.takes(x):  # optional: the same step as a CUDA-graph replay or a compiled network
                    loss = fast_step(x, y)
                else:
                    optimizer.zero_grad(set_to_none=True)
                    with fast_step.autocast():  # bf16 autocast when the amp lever is on, else nothing
                        loss = loss_fn(model, x, y, gen)  # forward and loss
                    loss.backward()
                    optimizer.step()
                step_losses[j] = loss.detach()
                step += 1
                if ema is not None:
                    ema.update(model, step)
            epoch_losses = step_losses[:j + 1].tolist()  # one host sync per epoch, not per step
            scheduler.step()
            fastpath.sync_lr(optimizer, captured_lrs)
            losses.extend(epoch_losses)
            if ema is not None:
                ema.copy_buffers(model)
            used = ema.model if ema is not None else model  # what the epoch's figures and checkpoints show
            ckpt = None
            if last is not None:
                state = dict(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                             gen_state=fastpath.generator_state(gen), shuffle_state=shuffle_gen.get_state(),
                             epoch=epoch, losses=losses, ema_state_dict=ema.model.state_dict() if ema else None)
                save_checkpoint(last, model, kind, inputs.extra, **state)
                if epoch in ckpt_epochs:
                    ckpt = save_checkpoint(last.parent / f"epoch_{epoch:04d}.pt", used, kind, inputs.extra, epoch=epoch)
            if inputs.on_epoch_end is not None:
                inputs.on_epoch_end(used, EpochResult(epoch, epoch_losses, lr_now, step, ckpt))
    model.eval()
    return TrainResult(model=ema.model if ema is not None else model, losses=losses, resumed_from_epoch=start_epoch)


def _resume(last: Path | None, device: torch.device, model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler, gen: torch.Generator, shuffle_gen: torch.Generator, ema: EMA | None) -> tuple[int, list[float]]:
    """Load last.pt into the training's state (weights, optimizer, scheduler, both generators, EMA) when there is
    one; returns (epochs done, their per-step losses), (0, []) for a fresh start."""
    state = load_resume_state(last, device) if last is not None else None
    if state is None:
        return 0, []
    model.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state["gen_state"] is not None:
        gen.set_state(state["gen_state"].cpu())
    shuffle_gen.set_state(state["shuffle_state"].cpu())
    if ema is not None:
        ema.model.load_state_dict(state.get("ema_state_dict") or state["state_dict"])
    return state["epoch"], state["losses"]
