"""Prefect task: final samples of a trained DDPM, its denoising trajectory and a GIF of it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from difflab import names, stages, tracking, viz
from difflab.config import PartBConfig
from difflab.train import pick_device
from tasks.refs import StageRef
from tasks.retry import retry_if_transient


@task(name="sample", task_run_name="sample-{ref.stage}", retries=1, retry_delay_seconds=5,
      retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def sample_stage(cfg: PartBConfig, ref: StageRef, parent_run_id: str) -> str:
    """Draw from a trained DDPM into a nested `sample_<stage>` run; returns that run's id."""
    tracking.configure(cfg.tracking)
    st = stages.STAGES[ref.stage]
    scfg = st.config(cfg)
    trained = stages.load(ref.checkpoint, pick_device(cfg.device, cfg.cpu_threads))
    name = f"sample_{st.name}"
    with tracking.run(name, cfg.tracking.experiment, parent_run_id,
                      {names.STAGE_TAG: name, "model_run_id": ref.run_id}) as run_id:
        guided = {"guidance": scfg.guidance} if getattr(st, "conditional", False) else {}  # no guidance without c
        tracking.log_params({**guided, "seed": cfg.seed, "model_run_id": ref.run_id, "gif_frames": scfg.gif_frames})
        samples, nrow, title = st.samples(trained, scfg, cfg.seed)
        tracking.log_image(viz.grid(samples.images, nrow=nrow, scale=3), names.FINAL_SAMPLES)
        tracking.log_image(viz.trajectory_grid(samples.frames, samples.frame_timesteps, scfg.trajectory_rows,
                                               title=f"{title}: denoising"), names.TRAJECTORY)
        with tempfile.TemporaryDirectory() as tmp:
            gif = viz.save_gif([viz.grid(f.clamp(0, 1), nrow=nrow, scale=3) for f in samples.frames],
                               Path(tmp) / names.denoising_gif(st.name))
            tracking.log_file(gif, names.IMAGES_DIR)
            tensors = Path(tmp) / names.SAMPLES_FILE
            torch.save({"images": samples.images, "labels": samples.labels}, tensors)
            tracking.log_file(tensors, names.SAMPLES_DIR)
    return run_id
