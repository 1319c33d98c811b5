"""Prefect tasks that train the three Part B networks and log every deliverable to MLflow.

A stage is identified by a cache key (its config, the data checksum, the seed and
the training code's hash). A finished MLflow run with the same key is reused
instead of retrained unless `force` is set; a retried task resumes from its last
epoch checkpoint.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from difflab import tracking, viz
from difflab.config import DDPMConfig, DenoiserConfig, PartBConfig, flatten_params, plan_training
from difflab.data import MnistData, to_float
from difflab.ddpm import DDPMSchedule, add_gaussian_noise, ddpm_loss, denoiser_loss
from difflab.sampling import digit_labels, sample_class_conditioned, sample_time_conditioned
from difflab.train import EpochResult, device_name, fit, pick_device, save_checkpoint
from difflab.unet import build_model, count_parameters
from tasks.progress import EpochProgress
from tasks.refs import DataRef, StageRef

STAGE_NAMES = {"denoiser": "denoiser", "time": "time_ddpm", "class": "class_ddpm"}
MODEL_KINDS = {"denoiser": "unconditional", "time": "time", "class": "class"}
TRAINING_MODULES = ("config.py", "data.py", "unet.py", "ddpm.py", "train.py", "sampling.py", "fastpath.py")
CHECKPOINT_ROOT = Path(".difflab") / "checkpoints"


def stage_config(cfg: PartBConfig, stage: str) -> DenoiserConfig | DDPMConfig:
    return getattr(cfg, STAGE_NAMES[stage])


def stage_cache_key(cfg: PartBConfig, stage: str, data: DataRef) -> str:
    return tracking.cache_key(stage, stage_config(cfg, stage).model_dump(), data.checksum, cfg.seed,
                              tracking.code_version(TRAINING_MODULES))


def registered_name(cfg: PartBConfig, stage: str) -> str | None:
    if not cfg.tracking.register_models:
        return None
    return f"{cfg.tracking.model_name_prefix}-{STAGE_NAMES[stage].replace('_', '-')}"


def _common_tags(cfg: PartBConfig, stage: str, key: str, data: DataRef, device: torch.device) -> dict:
    return {tracking.STAGE_TAG: STAGE_NAMES[stage], tracking.CACHE_KEY_TAG: key, "device": device_name(device),
            "git_commit": tracking.git_commit(), "data_source": data.source, "data_checksum": data.checksum,
            "profile": cfg.profile}


def _reuse(cfg: PartBConfig, stage: str, cached_run: str, key: str, data: DataRef, parent_run_id: str) -> StageRef:
    """Record in this flow run that the stage was reused, and fetch its final checkpoint."""
    old = tracking.get_run(cached_run)
    metrics = {k: v for k, v in old.data.metrics.items() if k in ("final_loss", "train_seconds")}
    tags = {**{k: v for k, v in old.data.tags.items() if not k.startswith("mlflow.")}, tracking.REUSED_TAG: cached_run}
    with tracking.run(f"{STAGE_NAMES[stage]} (reused)", cfg.tracking.experiment, parent_run_id, tags):
        tracking.log_params(old.data.params)
        tracking.log_metrics(metrics)
    ckpt = tracking.download(cached_run, "checkpoints/final.pt", CHECKPOINT_ROOT / key / "reused")
    get_run_logger().info("%s unchanged since run %s: reused (pass force=true to retrain)", STAGE_NAMES[stage],
                          cached_run)
    return StageRef(stage=stage, run_id=cached_run, checkpoint=str(ckpt), metrics=metrics, reused=True)


def _noise(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _denoiser_hooks(cfg: DenoiserConfig, test_x: torch.Tensor, seed: int, device: torch.device):
    """Deliverables of the single-step denoiser: noising grid, per-epoch results, the sigma sweep."""
    show = test_x[: cfg.num_show]
    sweep = [float(s) for s in cfg.sigma_sweep]

    def noisy(sigma: float) -> torch.Tensor:
        return add_gaussian_noise(show, sigma, _noise(show.shape, seed))

    def before() -> None:
        tracking.log_image(viz.labeled_grid([noisy(s) for s in sweep], [f"sigma={s}" for s in sweep],
                                            title="z = x + sigma * eps"), "noising_grid")

    @torch.no_grad()
    def denoise(model, z: torch.Tensor) -> torch.Tensor:
        return model.eval()(z.to(device)).cpu().clamp(0, 1)

    def snapshot(model, epoch: int) -> None:
        z = noisy(cfg.sigma)
        rows = [show, z, denoise(model, z)]
        tracking.log_image(viz.labeled_grid(rows, ["clean", f"noisy (sigma={cfg.sigma})", "denoised"],
                                            title=f"denoised test digits after epoch {epoch}"),
                           "denoised_test", step=epoch)

    def after(model) -> None:
        rows, labels = [], []
        for s in sweep:
            z = noisy(s)
            rows += [z, denoise(model, z)]
            labels += [f"noisy sigma={s}", "denoised"]
        tracking.log_image(viz.labeled_grid(rows, labels, title=f"trained at sigma={cfg.sigma}: "
                                                                 "out-of-distribution sweep"), "ood_sigma_sweep")

    return before, snapshot, after


def _ddpm_hooks(cfg: DDPMConfig, stage: str, schedule: DDPMSchedule, seed: int):
    def snapshot(model, epoch: int) -> None:
        if stage == "class":
            labels = digit_labels(cfg.samples_per_class)
            x, _ = sample_class_conditioned(model, schedule, labels, cfg.guidance, seed, fast=cfg.fast)
            rows = list(x.split(cfg.samples_per_class))
            img = viz.labeled_grid(rows, [f"digit {d}" for d in range(len(rows))],
                                   title=f"class-conditioned, guidance {cfg.guidance}, epoch {epoch}")
        else:
            x, _ = sample_time_conditioned(model, schedule, cfg.num_samples, seed, fast=cfg.fast)
            img = viz.grid(x, nrow=min(10, cfg.num_samples), scale=3)
        tracking.log_image(img, "samples", step=epoch)

    return (lambda: None), snapshot, (lambda model: None)


def train_stage(cfg: PartBConfig, stage: str, data: DataRef, parent_run_id: str) -> StageRef:
    """Train one Part B network (or reuse an identical finished run) inside a nested MLflow run."""
    tracking.configure(cfg.tracking)
    log = get_run_logger()
    scfg = stage_config(cfg, stage)
    key = stage_cache_key(cfg, stage, data)
    ckpt_dir = CHECKPOINT_ROOT / key
    if cfg.force:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    else:
        cached = tracking.find_cached_run(cfg.tracking.experiment, key)
        if cached:
            return _reuse(cfg, stage, cached, key, data, parent_run_id)

    device = pick_device(cfg.device, cfg.cpu_threads)
    mnist = MnistData.load(data.path)
    x_train, y_train = to_float(mnist.train_images), mnist.train_labels
    x_test = to_float(mnist.test_images)
    is_ddpm = stage != "denoiser"
    plan = plan_training(scfg.epochs, scfg.batch_size, scfg.snapshot_epochs, len(y_train), scfg.match_course_steps,
                         scfg.lr_final_factor if is_ddpm else 1.0)
    last = ckpt_dir / "last.pt"
    if last.exists() and torch.load(last, weights_only=False)["epoch"] >= plan.epochs:
        shutil.rmtree(ckpt_dir)  # a finished leftover without its MLflow run: redo it to log every deliverable

    if is_ddpm:
        schedule = DDPMSchedule(scfg.num_timesteps, scfg.beta1, scfg.beta2).to(device)
        extra = {"num_timesteps": scfg.num_timesteps, "beta1": scfg.beta1, "beta2": scfg.beta2}
        labelled = stage == "class"

        def loss_fn(model, x, y, gen):
            return ddpm_loss(model, schedule, x, y if labelled else None, scfg.p_uncond, gen)

        before, snapshot, after = _ddpm_hooks(scfg, stage, schedule, cfg.seed)
    else:
        extra = {"sigma": scfg.sigma}

        def loss_fn(model, x, y, gen):
            return denoiser_loss(model, x, scfg.sigma, gen)

        before, snapshot, after = _denoiser_hooks(scfg, x_test, cfg.seed, device)

    tags = _common_tags(cfg, stage, key, data, device)
    with tracking.run(STAGE_NAMES[stage], cfg.tracking.experiment, parent_run_id, tags) as run_id:
        tracking.log_params({**flatten_params(scfg), "seed": cfg.seed, "profile": cfg.profile,
                             "plan.epochs": plan.epochs, "plan.steps_per_epoch": plan.steps_per_epoch,
                             "plan.snapshot_epochs": plan.snapshot_epochs, "plan.lr_gamma": plan.lr_gamma,
                             "plan.epoch_scale": plan.epoch_scale, "data.n_train": len(y_train),
                             "model.parameters": count_parameters(build_model(MODEL_KINDS[stage],
                                                                              hidden=scfg.hidden))})
        if plan.epoch_scale != 1:
            tracking.log_tags({"steps_policy": f"course optimizer steps kept: {plan.epochs} epochs of "
                                               f"{len(y_train)} images instead of {scfg.epochs} of 60,000"})
        before()
        progress = EpochProgress(STAGE_NAMES[stage], plan.epochs)

        def on_epoch_end(model, res: EpochResult) -> None:
            tracking.log_series("train_loss", res.step_losses, res.global_step - len(res.step_losses))
            tracking.log_metrics({"epoch_loss": res.mean_loss, "lr": res.lr}, step=res.epoch)
            if res.checkpoint is not None:
                tracking.log_file(res.checkpoint, "checkpoints")
            if res.epoch in plan.snapshot_epochs:
                snapshot(model, res.epoch)
            progress.update(res.epoch, res.mean_loss)

        started = time.perf_counter()
        try:
            result = fit(MODEL_KINDS[stage], {"hidden": scfg.hidden}, loss_fn, x_train, y_train, plan, scfg.lr,
                         scfg.batch_size, cfg.seed, device, ckpt_dir, on_epoch_end, extra, scfg.fast)
        finally:
            progress.close()
        seconds = time.perf_counter() - started
        after(result.model)
        final = save_checkpoint(ckpt_dir / "final.pt", result.model, MODEL_KINDS[stage], extra, epoch=plan.epochs)
        tracking.log_file(final, "checkpoints")
        tracking.log_image(viz.loss_curve(result.losses, title=f"{STAGE_NAMES[stage]} training loss"), "loss_curve")
        last_epoch = result.losses[-plan.steps_per_epoch:]
        metrics = {"final_loss": sum(last_epoch) / len(last_epoch), "train_seconds": seconds,
                   "train_images_per_second": (plan.epochs - result.resumed_from_epoch) * len(y_train)
                   / max(seconds, 1e-9)}
        tracking.log_metrics(metrics)
        tracking.log_model(result.model, registered_name(cfg, stage))
        if result.resumed_from_epoch:
            tracking.log_tags({"resumed_from_epoch": result.resumed_from_epoch})
    log.info("%s: final loss %.4f in %.0f s", STAGE_NAMES[stage], metrics["final_loss"], seconds)
    return StageRef(stage=stage, run_id=run_id, checkpoint=str(final), metrics=metrics)


@task(name="train-denoiser", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def train_denoiser(cfg: PartBConfig, data: DataRef, parent_run_id: str) -> StageRef:
    return train_stage(cfg, "denoiser", data, parent_run_id)


@task(name="train-time-ddpm", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def train_time_ddpm(cfg: PartBConfig, data: DataRef, parent_run_id: str) -> StageRef:
    return train_stage(cfg, "time", data, parent_run_id)


@task(name="train-class-ddpm", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def train_class_ddpm(cfg: PartBConfig, data: DataRef, parent_run_id: str) -> StageRef:
    return train_stage(cfg, "class", data, parent_run_id)
