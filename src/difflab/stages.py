"""The three Part B networks as one shape: a Stage.

A stage knows what the spec says of one network: its name, the model it builds,
its config section, its loss, how it samples (the images and the timesteps of the
frames it kept), the figures that are its deliverables, how it is judged, and what
its checkpoint records (the stage's whole config, as DiT's checkpoints store
`args`), so that a checkpoint alone rebuilds model and schedule. Training,
sampling, evaluation and Part A's MNIST backend ask a stage; nothing else
branches on which network it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torch import nn

from difflab import viz
from difflab import names
from difflab.ddpm import DDPMSchedule, add_gaussian_noise, ddpm_loss, denoiser_loss
from difflab.judge import Judge, judge_predict
from difflab.metrics import class_agreement, denoiser_metrics, frechet_vs_real
from difflab.sampling import Samples, digit_labels, draw, draw_batched, schedule_from_extra
from difflab.train import LossFn, TrainingPlan, TrainSettings, load_model
from difflab.unet import MODEL_CLASSES, NUM_CLASSES

if TYPE_CHECKING:  # annotations only: a stage reads its typed config's values, so at run time this module (and
    # the served generator, which looks its stage up here) loads no pydantic (tests/test_import_graph.py)
    from difflab.config import DDPMConfig, DenoiserConfig, EvalConfig, PartBConfig, TrainConfig

Figures = dict[str, Image.Image]
"""Deliverable images by name (the MLflow image key)."""

SHOWN_PER_DIGIT = 10
"""Judged samples shown per digit in the evaluation figure."""


@dataclass
class Evaluation:
    metrics: dict[str, float] = field(default_factory=dict)
    """Logged in the evaluation run."""
    headline: dict[str, float] = field(default_factory=dict)
    """Also on the flow's run, as eval.<key>."""
    figures: Figures = field(default_factory=dict)
    tables: dict[str, dict] = field(default_factory=dict)
    """JSON artifacts by file name."""


@dataclass
class Trained:
    """A network rebuilt from its checkpoint, with what it was trained with."""

    stage: "Stage"
    model: nn.Module
    schedule: DDPMSchedule | None
    extra: dict


class Stage:
    key: str
    """The name in PartBConfig.stages: denoiser, time, class."""
    name: str
    """Its MLflow run name and config section: denoiser, time_ddpm, class_ddpm."""
    model_kind: str
    """What `unet.build_model` builds."""
    generative: bool = False
    """Whether it draws samples (a sampling run follows its training)."""
    edits_backend: bool = False
    """Whether Part A's MNIST backend edits with it (it needs conditions and an unconditional one)."""

    def config(self, cfg: PartBConfig) -> TrainConfig:
        return getattr(cfg, self.name)

    def registered_model(self, prefix: str) -> str:
        return f"{prefix}-{self.name.replace('_', '-')}"

    def lr_final_factor(self, scfg: TrainConfig) -> float:
        return 1.0

    def schedule(self, scfg: TrainConfig) -> DDPMSchedule | None:
        return None

    def schedule_from_extra(self, extra: dict) -> DDPMSchedule | None:
        return None

    def checkpoint_extra(self, scfg: TrainConfig) -> dict:
        return {"stage": self.key, "config": scfg.model_dump(mode="json")}

    def train_settings(self, scfg: TrainConfig, plan: TrainingPlan, seed: int = 0,
                       device: torch.device | str = "cpu") -> TrainSettings:
        """The plain settings train.fit takes, from this stage's typed config (the edge where pydantic ends)."""
        return TrainSettings(self.model_kind, {"hidden": scfg.hidden}, plan, scfg.lr, scfg.batch_size, seed=seed,
                             device=device, fast=scfg.fast.speed(), ema_decay=scfg.ema_decay)

    def loss(self, scfg: TrainConfig, schedule: DDPMSchedule | None) -> LossFn:
        raise NotImplementedError

    def figures_before(self, scfg: TrainConfig, test_x: torch.Tensor, seed: int) -> Figures:
        return {}

    def figures_at_epoch(self, model: nn.Module, scfg: TrainConfig, schedule: DDPMSchedule | None,
                         test_x: torch.Tensor, seed: int, epoch: int) -> Figures:
        """Logged as stepped images (step = epoch) after each snapshot epoch."""
        return {}

    def figures_after(self, model: nn.Module, scfg: TrainConfig, test_x: torch.Tensor, seed: int) -> Figures:
        return {}

    def samples(self, trained: Trained, scfg: TrainConfig, seed: int) -> tuple[Samples, int, str] | None:
        """The final samples deliverable with its trajectory: (samples, grid row length, title)."""
        return None

    def evaluate(self, trained: Trained, scfg: TrainConfig, ev: EvalConfig, judge: Judge, real_train: torch.Tensor,
                 real_test: torch.Tensor, seed: int) -> Evaluation:
        raise NotImplementedError


def _noise(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


class DenoiserStage(Stage):
    """1. The single-step denoiser D(z) trained to undo z = x + sigma eps at one sigma."""

    key, name, model_kind = "denoiser", "denoiser", "unconditional"

    def loss(self, scfg: DenoiserConfig, schedule=None) -> LossFn:
        return lambda model, x, y, gen: denoiser_loss(model, x, scfg.sigma, gen)

    @staticmethod
    def _noisy(show: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
        return add_gaussian_noise(show, sigma, _noise(show.shape, seed))

    @staticmethod
    @torch.no_grad()
    def _denoise(model: nn.Module, z: torch.Tensor) -> torch.Tensor:
        device = next(model.parameters()).device
        return model.eval()(z.to(device)).cpu().clamp(0, 1)

    def figures_before(self, scfg: DenoiserConfig, test_x, seed) -> Figures:
        show, sweep = test_x[: scfg.num_show], [float(s) for s in scfg.sigma_sweep]
        return {names.NOISING_GRID: viz.labeled_grid([self._noisy(show, s, seed) for s in sweep],
                                                 [f"sigma={s}" for s in sweep], title="z = x + sigma * eps")}

    def figures_at_epoch(self, model, scfg: DenoiserConfig, schedule, test_x, seed, epoch) -> Figures:
        show = test_x[: scfg.num_show]
        z = self._noisy(show, scfg.sigma, seed)
        return {names.DENOISED_TEST: viz.labeled_grid([show, z, self._denoise(model, z)],
                                                  ["clean", f"noisy (sigma={scfg.sigma})", "denoised"],
                                                  title=f"denoised test digits after epoch {epoch}")}

    def figures_after(self, model, scfg: DenoiserConfig, test_x, seed) -> Figures:
        show, rows, labels = test_x[: scfg.num_show], [], []
        for s in (float(s) for s in scfg.sigma_sweep):
            z = self._noisy(show, s, seed)
            rows += [z, self._denoise(model, z)]
            labels += [f"noisy sigma={s}", "denoised"]
        return {names.OOD_SIGMA_SWEEP: viz.labeled_grid(rows, labels, title=f"trained at sigma={scfg.sigma}: "
                                                                        "out-of-distribution sweep")}

    def evaluate(self, trained, scfg: DenoiserConfig, ev, judge, real_train, real_test, seed) -> Evaluation:
        """MSE and PSNR of the denoised held-out digits at every sigma of the sweep."""
        device = next(trained.model.parameters()).device
        res = denoiser_metrics(lambda z: trained.model(z), real_test, scfg.sigma_sweep, seed=seed, device=device)
        out = Evaluation()
        for sigma, m in res.items():
            out.metrics.update({names.denoiser_at_sigma("mse", sigma): m["mse"],
                                names.denoiser_at_sigma("psnr", sigma): m["psnr"]})
        at = res[float(scfg.sigma)]
        out.headline.update({"denoiser_mse": at["mse"], "denoiser_psnr": at["psnr"]})
        return out


class DDPMStage(Stage):
    """2. and 3. A DDPM over T steps predicting eps; class-conditioned ones sample with guidance."""

    generative = True

    def __init__(self, key: str, name: str, model_kind: str, conditional: bool):
        self.key, self.name, self.model_kind, self.conditional = key, name, model_kind, conditional
        self.edits_backend = conditional

    def lr_final_factor(self, scfg: DDPMConfig) -> float:
        return scfg.lr_final_factor

    def schedule(self, scfg: DDPMConfig) -> DDPMSchedule:
        return DDPMSchedule(scfg.num_timesteps, scfg.beta1, scfg.beta2)

    def schedule_from_extra(self, extra: dict) -> DDPMSchedule:
        return schedule_from_extra(extra)

    def checkpoint_extra(self, scfg: DDPMConfig) -> dict:
        return {**super().checkpoint_extra(scfg), "num_timesteps": scfg.num_timesteps, "beta1": scfg.beta1,
                "beta2": scfg.beta2}

    def loss(self, scfg: DDPMConfig, schedule: DDPMSchedule) -> LossFn:
        conditional = self.conditional
        return lambda model, x, y, gen: ddpm_loss(model, schedule, x, y if conditional else None, scfg.p_uncond, gen)

    def _grid_labels(self, scfg: DDPMConfig) -> torch.Tensor | None:
        return digit_labels(scfg.samples_per_class) if self.conditional else None

    def figures_at_epoch(self, model, scfg: DDPMConfig, schedule, test_x, seed, epoch) -> Figures:
        labels = self._grid_labels(scfg)
        x = draw(model, schedule, scfg.num_samples, seed, labels, scfg.guidance, fast=scfg.fast.speed(),
                 clip_x0=scfg.clip_x0).images
        if labels is None:
            return {names.SNAPSHOT_SAMPLES: viz.grid(x, nrow=min(10, scfg.num_samples), scale=3)}
        rows = list(x.split(scfg.samples_per_class))
        return {names.SNAPSHOT_SAMPLES: viz.labeled_grid(rows, [f"digit {d}" for d in range(len(rows))],
                                            title=f"class-conditioned, guidance {scfg.guidance}, epoch {epoch}")}

    def samples(self, trained, scfg: DDPMConfig, seed) -> tuple[Samples, int, str]:
        labels = self._grid_labels(scfg)
        s = draw(trained.model, trained.schedule, scfg.num_samples, seed, labels, scfg.guidance, scfg.gif_frames,
                 fast=scfg.fast.speed(), clip_x0=scfg.clip_x0)
        if labels is None:
            return s, min(10, scfg.num_samples), "time-conditioned samples"
        return s, scfg.samples_per_class, f"guidance {scfg.guidance}: {scfg.samples_per_class} of each digit"

    def evaluate(self, trained, scfg: DDPMConfig, ev, judge, real_train, real_test, seed) -> Evaluation:
        """Frechet distance in the judge's features beside the real-vs-real floor; for guided samples, how
        often the judge reads the digit asked for (overall and for the worst digit); for unguided ones, how
        the judge's readings spread over the ten digits (the rarest digit's share: 0.1 is a perfect spread)."""
        labels = torch.arange(ev.num_samples) % NUM_CLASSES if self.conditional else None
        x = draw_batched(trained.model, trained.schedule, ev.num_samples, ev.sample_batch_size, seed, labels,
                         scfg.guidance, fast=scfg.fast.speed(), clip_x0=scfg.clip_x0)
        fd = frechet_vs_real(judge, x, real_train, real_test, seed=seed)
        k = self.key
        out = Evaluation(metrics={names.frechet(k): fd["frechet"], names.frechet_floor(k): fd["frechet_real_floor"]},
                         headline={f"{k}_frechet": fd["frechet"], "frechet_real_floor": fd["frechet_real_floor"],
                                   f"{k}_frechet_ratio": fd["frechet"] / max(fd["frechet_real_floor"], 1e-9)})
        if labels is not None:
            agree = class_agreement(judge, x, labels)
            out.metrics.update({names.agreement(k): agree["agreement"], names.confidence(k): agree["confidence"],
                                **{names.agreement_digit(k, d): v["agreement"] for d, v in agree["per_digit"].items()}})
            out.headline.update({f"{k}_agreement": agree["agreement"], f"{k}_confidence": agree["confidence"],
                                 f"{k}_agreement_min_digit": min(v["agreement"] for v in agree["per_digit"].values())})
            out.tables[f"{k}_agreement.json"] = agree
            out.figures[names.JUDGED_SAMPLES] = judged_figure(judge, x, labels)
        else:
            share = digit_shares(judge, x)
            out.metrics.update({f"{k}.digit_share.digit_{d}": v for d, v in enumerate(share)})
            out.headline[f"{k}_min_digit_share"] = min(share)
            out.tables[f"{k}_digit_shares.json"] = {str(d): v for d, v in enumerate(share)}
        return out


def digit_shares(judge: Judge, samples: torch.Tensor) -> list[float]:
    """The share of samples the judge reads as each digit 0-9."""
    pred = judge_predict(judge, samples).argmax(1)
    return (torch.bincount(pred, minlength=NUM_CLASSES).float() / max(1, len(pred))).tolist()


def judged_figure(judge: Judge, samples: torch.Tensor, labels: torch.Tensor) -> Image.Image:
    """One row per requested digit, labelled with how many of those shown the judge read as that digit."""
    pred = judge_predict(judge, samples).argmax(1)
    rows, names = [], []
    for d in range(NUM_CLASSES):
        idx = (labels == d).nonzero().flatten()[:SHOWN_PER_DIGIT]
        rows.append(samples[idx])
        names.append(f"{d}: {int((pred[idx] == d).sum())}/{len(idx)}")
    return viz.labeled_grid(rows, names, None, title="class-conditioned samples: requested digit, judged correct")


STAGES: dict[str, Stage] = {
    "denoiser": DenoiserStage(),
    "time": DDPMStage("time", names.PART_B_STAGES["time"], "time", conditional=False),
    "class": DDPMStage("class", names.PART_B_STAGES["class"], "class", conditional=True),
}


def stage_of(model: nn.Module) -> Stage:
    """The stage whose network this is."""
    for stage in STAGES.values():
        if type(model) is MODEL_CLASSES[stage.model_kind]:
            return stage
    raise ValueError(f"{type(model).__name__} is not a Part B network")


def load(path: str | Path, device: torch.device | str = "cpu") -> Trained:
    """Rebuild a trained stage from its checkpoint: the model (eval mode) and, for a DDPM, its schedule."""
    model, extra = load_model(path, device)
    stage = stage_of(model)
    try:
        schedule = stage.schedule_from_extra(extra)
    except KeyError as exc:
        raise ValueError(f"checkpoint {path} lacks the schedule key {exc} in its extra dict; use a checkpoint "
                         "written by the training flow") from None
    return Trained(stage, model, schedule, extra)
