"""Prefect task: final samples of a trained DDPM, its denoising trajectory and a GIF of it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from difflab import tracking, viz
from difflab.config import PartBConfig
from difflab.sampling import digit_labels, sample_class_conditioned, sample_time_conditioned, schedule_from_extra
from difflab.train import load_model, pick_device
from tasks.refs import StageRef
from tasks.training import STAGE_NAMES, stage_config

TRAJECTORY_ROWS = 10


@task(name="sample", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def sample_stage(cfg: PartBConfig, stage: StageRef, parent_run_id: str) -> str:
    """Draw from a trained DDPM into a nested `sample_<stage>` run; returns that run's id."""
    tracking.configure(cfg.tracking)
    scfg = stage_config(cfg, stage.stage)
    device = pick_device(cfg.device, cfg.cpu_threads)
    model, extra = load_model(stage.checkpoint, device)
    schedule = schedule_from_extra(extra)
    name = f"sample_{STAGE_NAMES[stage.stage]}"
    with tracking.run(name, cfg.tracking.experiment, parent_run_id,
                      {tracking.STAGE_TAG: name, "model_run_id": stage.run_id}) as run_id:
        tracking.log_params({"guidance": scfg.guidance, "seed": cfg.seed, "model_run_id": stage.run_id,
                             "gif_frames": scfg.gif_frames})
        if stage.stage == "class":
            labels = digit_labels(scfg.samples_per_class)
            x, frames = sample_class_conditioned(model, schedule, labels, scfg.guidance, cfg.seed, scfg.gif_frames,
                                                 fast=scfg.fast)
            nrow, title = scfg.samples_per_class, f"guidance {scfg.guidance}: {scfg.samples_per_class} of each digit"
        else:
            labels = None
            x, frames = sample_time_conditioned(model, schedule, scfg.num_samples, cfg.seed, scfg.gif_frames,
                                                fast=scfg.fast)
            nrow, title = min(10, scfg.num_samples), "time-conditioned samples"
        tracking.log_image(viz.grid(x, nrow=nrow, scale=3), "final_samples")
        steps = [f"t={schedule.num_timesteps - 1 - round(i * (schedule.num_timesteps - 1) / max(1, len(frames) - 1))}"
                 for i in range(len(frames))]
        picks = torch.linspace(0, len(x) - 1, min(TRAJECTORY_ROWS, len(x))).long()
        columns = [f.clamp(0, 1)[picks] for f in frames]
        trajectory = [torch.stack([c[r] for c in columns]) for r in range(len(picks))]
        tracking.log_image(viz.labeled_grid(trajectory, None, steps, title=f"{title}: denoising"), "trajectory")
        with tempfile.TemporaryDirectory() as tmp:
            gif = viz.save_gif([viz.grid(f.clamp(0, 1), nrow=nrow, scale=3) for f in frames],
                               Path(tmp) / f"{STAGE_NAMES[stage.stage]}_denoising.gif")
            tracking.log_file(gif, "images")
            tensors = Path(tmp) / "samples.pt"
            torch.save({"images": x, "labels": labels}, tensors)
            tracking.log_file(tensors, "samples")
    return run_id
