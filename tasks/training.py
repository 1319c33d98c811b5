"""Prefect task that trains one Part B stage and logs every deliverable to MLflow.

It reads straight down: reuse an identical finished run, or train, then log. A stage
is identified by a cache key (its config, the data checksum, the seed and the
training code's hash); a retried or rerun task resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from difflab import tracking, viz
from difflab.config import PartBConfig, flatten_params, workdir
from difflab.data import MnistData, to_float
from difflab.locks import file_lock
from difflab.stages import STAGES, Stage
from difflab.train import (EpochResult, TrainingPlan, device_name, fit, pick_device, plan_training, resume_epoch,
                           save_checkpoint)
from difflab.unet import count_parameters
from tasks.progress import EpochProgress
from tasks.refs import DataRef, StageRef
from tasks.retry import retry_if_transient

TRAINING_MODULES = ("config.py", "data.py", "unet.py", "ddpm.py", "train.py", "sampling.py", "stages.py",
                    "fastpath.py")
RUN_FILE = "run.json"
"""Beside a stage's checkpoints: the MLflow run that is training into them, for resumes to point at."""


def checkpoint_root() -> Path:
    return workdir() / "checkpoints"


def stage_cache_key(cfg: PartBConfig, stage: Stage, data: DataRef) -> str:
    return tracking.cache_key(stage.key, stage.config(cfg).model_dump(), data.checksum, cfg.seed,
                              tracking.code_version(TRAINING_MODULES))


@task(name="train-stage", task_run_name="train-{stage}", retries=1, retry_delay_seconds=5,
      retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def train_stage(cfg: PartBConfig, stage: str, data: DataRef, parent_run_id: str) -> StageRef:
    """Train one Part B network in a nested MLflow run, or point at an identical finished one.

    One process at a time per stage and cache key: a run started beside another waits for it, then
    finds its finished run and reuses it, instead of training into (and resuming from) the same folder."""
    tracking.configure(cfg.tracking)
    st = STAGES[stage]
    key = stage_cache_key(cfg, st, data)
    lock = checkpoint_root() / f"{key}.lock"  # beside the checkpoint folder, which may be deleted
    with file_lock(lock, cfg.lock_timeout_s, on_wait=lambda holder: get_run_logger().info(
            "%s is being trained by %s; waiting for it, then reusing its run", st.name, holder)):
        original = None if cfg.force else tracking.find_cached_run(cfg.tracking.experiment, key)
        if original:
            return record_reuse(cfg, st, original, key, parent_run_id)
        return train_and_log(cfg, st, key, data, parent_run_id)


def record_reuse(cfg: PartBConfig, st: Stage, original: str, key: str, parent_run_id: str) -> StageRef:
    """A `<stage> (reused)` run that points at the run holding the artifacts; fetch its final checkpoint."""
    old = tracking.get_run(original)
    metrics = {k: v for k, v in old.data.metrics.items() if k in ("final_loss", "train_seconds")}
    tags = {k: v for k, v in old.data.tags.items() if not k.startswith("mlflow.") and k != tracking.CACHE_KEY_TAG}
    with tracking.run(f"{st.name} (reused)", cfg.tracking.experiment, parent_run_id,
                      {**tags, tracking.REUSED_TAG: original}):
        tracking.log_params(old.data.params)
        tracking.log_metrics(metrics)
    ckpt = tracking.download(original, "checkpoints/final.pt", checkpoint_root() / key / "reused")
    get_run_logger().info("%s unchanged since run %s: reused (pass force=true to retrain)", st.name, original)
    return StageRef(stage=st.key, run_id=original, checkpoint=str(ckpt), metrics=metrics, reused=True,
                    model_id=tracking.find_logged_model(original, st.name))


def train_and_log(cfg: PartBConfig, st: Stage, key: str, data: DataRef, parent_run_id: str) -> StageRef:
    scfg = st.config(cfg)
    ckpt_dir = checkpoint_root() / key
    if cfg.force:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    device = pick_device(cfg.device, cfg.cpu_threads)
    mnist = MnistData.load(data.path)
    x_train, y_train, x_test = to_float(mnist.train_images), mnist.train_labels, to_float(mnist.test_images)
    plan = plan_training(scfg.epochs, scfg.batch_size, scfg.snapshot_epochs, len(y_train), scfg.match_course_steps,
                         st.lr_final_factor(scfg))
    resumed_from = _resume_state(ckpt_dir, plan)
    schedule = st.schedule(scfg)
    schedule = schedule.to(device) if schedule is not None else None
    tags = {tracking.STAGE_TAG: st.name, tracking.CACHE_KEY_TAG: key, "device": device_name(device),
            "git_commit": tracking.git_commit(), "data_source": data.source, "data_checksum": data.checksum,
            "profile": cfg.profile, **resumed_from}

    with tracking.run(st.name, cfg.tracking.experiment, parent_run_id, tags) as run_id:
        (ckpt_dir / RUN_FILE).parent.mkdir(parents=True, exist_ok=True)
        (ckpt_dir / RUN_FILE).write_text(json.dumps({"run_id": run_id}))
        tracking.log_params({**flatten_params(scfg), "seed": cfg.seed, "profile": cfg.profile,
                             "plan.epochs": plan.epochs, "plan.steps_per_epoch": plan.steps_per_epoch,
                             "plan.snapshot_epochs": plan.snapshot_epochs, "plan.lr_gamma": plan.lr_gamma,
                             "plan.epoch_scale": plan.epoch_scale, "data.n_train": len(y_train)})
        if plan.epoch_scale != 1:
            tracking.log_tags({"steps_policy": f"course optimizer steps kept: {plan.epochs} epochs of "
                                               f"{len(y_train)} images instead of {scfg.epochs} of 60,000"})
        _log_figures(st.figures_before(scfg, x_test, cfg.seed))
        progress = EpochProgress(st.name, plan.epochs)
        model_ids: dict[int, str] = {}

        def on_epoch_end(model, res: EpochResult) -> None:
            tracking.log_series("train_loss", res.step_losses, res.global_step - len(res.step_losses))
            if res.epoch in plan.snapshot_epochs or res.epoch == plan.epochs:  # a checkpoint MLflow can rank
                model_ids[res.epoch] = _log_checkpoint_model(st, scfg, model, res.checkpoint, res.epoch, plan)
            tracking.log_metrics({"epoch_loss": res.mean_loss, "lr": res.lr}, step=res.epoch,
                                 model_id=model_ids.get(res.epoch))
            if res.checkpoint is not None:
                tracking.log_file(res.checkpoint, "checkpoints")
            if res.epoch in plan.snapshot_epochs:
                _log_figures(st.figures_at_epoch(model, scfg, schedule, x_test, cfg.seed, res.epoch), res.epoch)
            progress.update(res.epoch, res.mean_loss)

        started = time.perf_counter()
        try:
            result = fit(st.model_kind, {"hidden": scfg.hidden}, st.loss(scfg, schedule), x_train, y_train, plan,
                         scfg.lr, scfg.batch_size, cfg.seed, device, ckpt_dir, on_epoch_end, st.checkpoint_extra(scfg),
                         fast=scfg.fast, ema_decay=scfg.ema_decay)
        finally:
            progress.close()
        seconds = time.perf_counter() - started
        if result.resumed_from_epoch:
            _log_earlier_epochs(st, scfg, result.losses, plan, result.resumed_from_epoch, ckpt_dir)
        _log_figures(st.figures_after(result.model, scfg, x_test, cfg.seed))
        final = save_checkpoint(ckpt_dir / "final.pt", result.model, st.model_kind, st.checkpoint_extra(scfg),
                                epoch=plan.epochs)
        tracking.log_file(final, "checkpoints")
        tracking.log_image(viz.loss_curve(result.losses, title=f"{st.name} training loss"), "loss_curve")
        trained_epochs = plan.epochs - result.resumed_from_epoch
        last_epoch = result.losses[-plan.steps_per_epoch:]
        metrics = {"final_loss": sum(last_epoch) / len(last_epoch), "train_seconds": seconds,
                   "train_images_per_second": trained_epochs * len(y_train) / max(seconds, 1e-9)}
        model_id = model_ids[plan.epochs]  # the final model: the last epoch's weights, as final.pt holds them
        tracking.log_metrics(metrics, step=plan.epochs, model_id=model_id)
        tracking.log_params({"model.parameters": count_parameters(result.model),
                             "train_seconds.covers": f"epochs {result.resumed_from_epoch + 1}-{plan.epochs}"})
        if cfg.tracking.register_models:
            tracking.register_logged_model(model_id, st.registered_model(cfg.tracking.model_name_prefix))
    get_run_logger().info("%s: final loss %.4f in %.0f s", st.name, metrics["final_loss"], seconds)
    return StageRef(stage=st.key, run_id=run_id, checkpoint=str(final), metrics=metrics, model_id=model_id)


def checkpoint_model_name(st: Stage, epoch: int, plan: TrainingPlan) -> str:
    """A logged model's name: the stage's (`class_ddpm`) for the final one, `class_ddpm-epoch-5` before."""
    return st.name if epoch == plan.epochs else f"{st.name}-epoch-{epoch}"


def _log_checkpoint_model(st: Stage, scfg, model, checkpoint: Path | None, epoch: int, plan: TrainingPlan) -> str:
    """One epoch's checkpoint as a logged pyfunc model of the active run (step = epoch); returns its id.
    An epoch without a checkpoint file (course epochs scaled up) gets one written for the purpose."""
    tags = {tracking.STAGE_TAG: st.name,
            tracking.CHECKPOINT_TAG: "final" if epoch == plan.epochs else f"epoch_{epoch:04d}"}
    params = {"hidden": scfg.hidden, "epoch": epoch, "plan.epochs": plan.epochs}
    name = checkpoint_model_name(st, epoch, plan)
    if checkpoint is not None:
        return tracking.log_generator(checkpoint, name, epoch, params=params, tags=tags)
    with tempfile.TemporaryDirectory(prefix="difflab-model-") as tmp:
        path = save_checkpoint(Path(tmp) / f"epoch_{epoch:04d}.pt", model, st.model_kind, st.checkpoint_extra(scfg),
                               epoch=epoch)
        return tracking.log_generator(path, name, epoch, params=params, tags=tags)


def _resume_state(ckpt_dir: Path, plan: TrainingPlan) -> dict[str, str]:
    """Tags saying which earlier run a resume continues; a finished leftover (its run lost) is started over."""
    epoch = resume_epoch(ckpt_dir / "last.pt")  # a corrupt last.pt is set aside (renamed, logged): 0
    if epoch == 0:
        return {}
    if epoch >= plan.epochs:
        shutil.rmtree(ckpt_dir)  # finished but never recorded as FINISHED: redo it to log every deliverable
        return {}
    earlier = json.loads((ckpt_dir / RUN_FILE).read_text())["run_id"] if (ckpt_dir / RUN_FILE).exists() else ""
    return {"resumed_from_epoch": str(epoch), **({"difflab.resumed_from_run": earlier} if earlier else {})}


def _log_earlier_epochs(st: Stage, scfg, losses: list[float], plan: TrainingPlan, resumed_from: int,
                        ckpt_dir: Path) -> None:
    """A resumed run also carries what the interrupted one logged: per-step losses, epoch checkpoints and the
    snapshot epochs' logged models (its figures stay in the run named by difflab.resumed_from_run)."""
    tracking.log_series("train_loss", losses[: resumed_from * plan.steps_per_epoch], 0)
    for ckpt in sorted(ckpt_dir.glob("epoch_*.pt")):
        epoch = int(ckpt.stem.split("_")[1])
        if epoch <= resumed_from:
            tracking.log_file(ckpt, "checkpoints")
            if epoch in plan.snapshot_epochs:
                epoch_losses = losses[(epoch - 1) * plan.steps_per_epoch: epoch * plan.steps_per_epoch]
                model_id = _log_checkpoint_model(st, scfg, None, ckpt, epoch, plan)
                tracking.log_metrics({"epoch_loss": sum(epoch_losses) / max(1, len(epoch_losses))}, step=epoch,
                                     model_id=model_id)


def _log_figures(figures: dict, step: int | None = None) -> None:
    for name, image in figures.items():
        tracking.log_image(image, name, step=step)
