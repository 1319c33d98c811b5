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

from difflab import evaluation_plan, names, planning, provenance, tracking, viz
from difflab.config import PartBConfig, TrainConfig, flatten_params, workdir
from difflab.data import MnistData, to_float
from difflab.locks import file_lock
from difflab.stages import STAGES, Stage
from difflab.train import (EpochResult, TrainingPlan, TrainInputs, device_name, fit, pick_device, plan_training,
                           resume_epoch, save_checkpoint)
from difflab.unet import count_parameters
from tasks.progress import EpochProgress
from tasks.refs import DataRef, StageRef
from tasks.retry import retry_if_transient

RUN_FILE = "run.json"
"""Beside a stage's checkpoints: the MLflow run that is training into them, for resumes to point at."""


def checkpoint_root() -> Path:
    return workdir() / names.CHECKPOINTS_DIR


def stage_cache_key(cfg: PartBConfig, stage: Stage, data: DataRef) -> str:
    """The stage, its config, the data, the seed and a hash of the whole library package: a module added
    or changed anywhere under src/difflab means training again, never reusing a run of other code."""
    return provenance.cache_key(stage.key, stage.config(cfg).model_dump(), data.checksum, cfg.seed,
                                provenance.package_hash())


def resolve(cfg: PartBConfig, st: Stage, mnist: MnistData, device) -> planning.StagePlan:
    """The stage's levers and epochs on this machine (a probe on its first run here, cached after)."""
    return planning.resolve_stage(cfg, st, to_float(mnist.train_images), mnist.train_labels, device)


def with_plan(cfg: PartBConfig, st: Stage, plan: planning.StagePlan) -> PartBConfig:
    """The run's config with this stage's section resolved: what it trains with and is keyed by."""
    return cfg.model_copy(update={st.name: plan.apply(st.config(cfg))})


def log_plan(plan: planning.StagePlan, st: Stage, parent_run_id: str | None) -> None:
    """In the stage's run: fast.resolved.*, plan.*, the probe table; on the flow's run, <stage>.fast.resolved.*
    and <stage>.plan.* (only values that a rerun here repeats: MLflow refuses a param changed)."""
    tracking.log_params(plan.params())
    if plan.train_probe or plan.sample_probe:
        tracking.log_text(plan.probe_markdown(), "fast_probe.md")
        tracking.log_dict({"device": plan.device, "train": [m.__dict__ for m in plan.train_probe],
                           "sample": [m.__dict__ for m in plan.sample_probe]}, "fast_probe.json")
    if parent_run_id:
        tracking.log_params({f"{st.name}.{k}": v for k, v in plan.stable_params().items()}, parent_run_id)


@task(name="plan-part-b", cache_policy=NO_CACHE)
def plan_part_b(cfg: PartBConfig, data: DataRef, parent_run_id: str) -> dict[str, str]:
    """Resolve every configured stage's levers and epochs (probing where this machine has no cached probe)
    and size the evaluation, so the run says at start, one line each, what it will do and how long it takes."""
    logger = get_run_logger()
    device = pick_device(cfg.device, cfg.cpu_threads)
    mnist = MnistData.load(data.path)
    plans = {}
    for key in cfg.stages:
        plans[key] = plan = resolve(cfg, STAGES[key], mnist, device)
        for warning in plan.warnings:
            logger.warning(warning)
        logger.info(plan.announce())
        tracking.log_params({f"{STAGES[key].name}.{k}": v for k, v in plan.stable_params().items()}, parent_run_id)
    lines = {key: p.announce() for key, p in plans.items()}
    if cfg.evaluation.enabled:
        eplan = evaluation_plan.plan_evaluation(cfg, plans)
        logger.info(eplan.announce())
        lines["evaluation"] = eplan.announce()
        tracking.log_params({"evaluation.plan.num_samples": eplan.num_samples,
                             "evaluation.plan.num_samples_source": eplan.source}, parent_run_id)
    if cfg.budget_minutes:
        total = sum(p.estimate_s for p in plans.values()) + (eplan.estimate_s if cfg.evaluation.enabled else 0)
        logger.info("Part B: budget %.0f min, planned about %.0f min on %s", cfg.budget_minutes, total / 60,
                    next(iter(plans.values())).device if plans else "this machine")
        tracking.log_params({"plan.budget_minutes": cfg.budget_minutes}, parent_run_id)
    return lines


@task(name="train-stage", task_run_name="train-{stage}", retries=1, retry_delay_seconds=5,
      retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def train_stage(cfg: PartBConfig, stage: str, data: DataRef, parent_run_id: str) -> StageRef:
    """Train one Part B network in a nested MLflow run, or point at an identical finished one.

    The levers and epochs are resolved first (difflab.planning; cached per machine), and the stage is keyed
    by what it will really run. One process at a time per stage and cache key: a run started beside another
    waits for it, then finds its finished run and reuses it, instead of training into (and resuming from)
    the same folder."""
    tracking.configure(cfg.tracking)
    st = STAGES[stage]
    configured = st.config(cfg)
    plan = resolve(cfg, st, MnistData.load(data.path), pick_device(cfg.device, cfg.cpu_threads))
    for warning in plan.warnings:
        get_run_logger().warning(warning)
    get_run_logger().info(plan.announce())
    cfg = with_plan(cfg, st, plan)
    key = stage_cache_key(cfg, st, data)
    lock = checkpoint_root() / f"{key}.lock"  # beside the checkpoint folder, which may be deleted
    with file_lock(lock, cfg.lock_timeout_s, on_wait=lambda holder: get_run_logger().info(
            "%s is being trained by %s; waiting for it, then reusing its run", st.name, holder)):
        original = None if cfg.force else tracking.find_cached_run(cfg.tracking.experiment, key)
        if original:
            return record_reuse(cfg, st, original, key, parent_run_id, plan)
        return train_and_log(cfg, st, key, data, parent_run_id, plan, configured)


def record_reuse(cfg: PartBConfig, st: Stage, original: str, key: str, parent_run_id: str,
                 plan: planning.StagePlan | None = None) -> StageRef:
    """A `<stage> (reused)` run that points at the run holding the artifacts; fetch its final checkpoint."""
    old = tracking.get_run(original)
    metrics = {k: v for k, v in old.data.metrics.items() if k in (names.FINAL_LOSS, names.TRAIN_SECONDS)}
    tags = {k: v for k, v in old.data.tags.items() if not k.startswith("mlflow.") and k != names.CACHE_KEY_TAG}
    with tracking.run(f"{st.name} (reused)", cfg.tracking.experiment, parent_run_id,
                      {**tags, names.REUSED_TAG: original}):
        tracking.log_params(old.data.params)
        tracking.log_metrics(metrics)
        if plan is not None and parent_run_id:
            tracking.log_params({f"{st.name}.{k}": v for k, v in plan.stable_params().items()}, parent_run_id)
    ckpt = tracking.download(original, names.FINAL_CHECKPOINT, checkpoint_root() / key / "reused")
    get_run_logger().info("%s unchanged since run %s: reused (pass force=true to retrain)", st.name, original)
    return StageRef(stage=st.key, run_id=original, checkpoint=str(ckpt), metrics=metrics, reused=True,
                    model_id=tracking.find_logged_model(original, st.name))


def train_and_log(cfg: PartBConfig, st: Stage, key: str, data: DataRef, parent_run_id: str,
                  splan: planning.StagePlan | None = None, configured: TrainConfig | None = None) -> StageRef:
    """Train with cfg (its stage section already resolved by `plan`) in a new run; the run's params are the
    configured values (`fast.amp=auto`) beside the resolved ones (`fast.resolved.amp`) and the plan `splan`."""
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
    tags = {names.STAGE_TAG: st.name, names.CACHE_KEY_TAG: key, "device": device_name(device),
            "git_commit": provenance.git_commit(), "data_source": data.source, "data_checksum": data.checksum,
            "profile": cfg.profile, **resumed_from}

    with tracking.run(st.name, cfg.tracking.experiment, parent_run_id, tags) as run_id:
        (ckpt_dir / RUN_FILE).parent.mkdir(parents=True, exist_ok=True)
        (ckpt_dir / RUN_FILE).write_text(json.dumps({"run_id": run_id}))
        tracking.log_params({**flatten_params(configured or scfg), "seed": cfg.seed, "profile": cfg.profile,
                             "plan.epochs": plan.epochs, "plan.steps_per_epoch": plan.steps_per_epoch,
                             "plan.snapshot_epochs": plan.snapshot_epochs, "plan.lr_gamma": plan.lr_gamma,
                             "plan.epoch_scale": plan.epoch_scale, "data.n_train": len(y_train)})
        if plan.epoch_scale != 1:
            tracking.log_tags({"steps_policy": f"course optimizer steps kept: {plan.epochs} epochs of "
                                               f"{len(y_train)} images instead of {scfg.epochs} of 60,000"})
        if splan is not None:
            log_plan(splan, st, parent_run_id)
        _log_figures(st.figures_before(scfg, x_test, cfg.seed))
        progress = EpochProgress(st.name, plan.epochs)
        model_ids: dict[int, str] = {}

        def on_epoch_end(model, res: EpochResult) -> None:
            tracking.log_series(names.TRAIN_LOSS, res.step_losses, res.global_step - len(res.step_losses))
            if res.epoch in plan.snapshot_epochs or res.epoch == plan.epochs:  # a checkpoint MLflow can rank
                model_ids[res.epoch] = _log_checkpoint_model(st, scfg, model, res.checkpoint, res.epoch, plan)
            tracking.log_metrics({names.EPOCH_LOSS: res.mean_loss, names.LR: res.lr}, step=res.epoch,
                                 model_id=model_ids.get(res.epoch))
            if res.checkpoint is not None:
                tracking.log_file(res.checkpoint, names.CHECKPOINTS_DIR)
            if res.epoch in plan.snapshot_epochs:
                _log_figures(st.figures_at_epoch(model, scfg, schedule, x_test, cfg.seed, res.epoch), res.epoch)
            progress.update(res.epoch, res.mean_loss)

        started = time.perf_counter()
        try:
            result = fit(st.train_settings(scfg, plan, cfg.seed, device),
                         TrainInputs(x_train, y_train, st.loss(scfg, schedule), ckpt_dir, on_epoch_end,
                                     st.checkpoint_extra(scfg)))
        finally:
            progress.close()
        seconds = time.perf_counter() - started
        if result.resumed_from_epoch:
            _log_earlier_epochs(st, scfg, result.losses, plan, result.resumed_from_epoch, ckpt_dir)
        _log_figures(st.figures_after(result.model, scfg, x_test, cfg.seed))
        final = save_checkpoint(ckpt_dir / "final.pt", result.model, st.model_kind, st.checkpoint_extra(scfg),
                                epoch=plan.epochs)
        tracking.log_file(final, names.CHECKPOINTS_DIR)
        tracking.log_image(viz.loss_curve(result.losses, title=f"{st.name} training loss"), names.LOSS_CURVE)
        trained_epochs = plan.epochs - result.resumed_from_epoch
        last_epoch = result.losses[-plan.steps_per_epoch:]
        metrics = {names.FINAL_LOSS: sum(last_epoch) / len(last_epoch), names.TRAIN_SECONDS: seconds,
                   "train_images_per_second": trained_epochs * len(y_train) / max(seconds, 1e-9)}
        model_id = model_ids[plan.epochs]  # the final model: the last epoch's weights, as final.pt holds them
        tracking.log_metrics(metrics, step=plan.epochs, model_id=model_id)
        tracking.log_params({"model.parameters": count_parameters(result.model),
                             "train_seconds.covers": f"epochs {result.resumed_from_epoch + 1}-{plan.epochs}"})
        if cfg.tracking.register_models:
            tracking.register_logged_model(model_id, st.registered_model(cfg.tracking.model_name_prefix))
    get_run_logger().info("%s: final loss %.4f in %.0f s", st.name, metrics[names.FINAL_LOSS], seconds)
    return StageRef(stage=st.key, run_id=run_id, checkpoint=str(final), metrics=metrics, model_id=model_id)


def checkpoint_model_name(st: Stage, epoch: int, plan: TrainingPlan) -> str:
    """A logged model's name: the stage's (`class_ddpm`) for the final one, `class_ddpm-epoch-5` before."""
    return st.name if epoch == plan.epochs else f"{st.name}-epoch-{epoch}"


def _log_checkpoint_model(st: Stage, scfg, model, checkpoint: Path | None, epoch: int, plan: TrainingPlan) -> str:
    """One epoch's checkpoint as a logged pyfunc model of the active run (step = epoch); returns its id.
    An epoch without a checkpoint file (course epochs scaled up) gets one written for the purpose."""
    tags = {names.STAGE_TAG: st.name,
            names.CHECKPOINT_TAG: "final" if epoch == plan.epochs else f"epoch_{epoch:04d}"}
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
    tracking.log_series(names.TRAIN_LOSS, losses[: resumed_from * plan.steps_per_epoch], 0)
    for ckpt in sorted(ckpt_dir.glob("epoch_*.pt")):
        epoch = int(ckpt.stem.split("_")[1])
        if epoch <= resumed_from:
            tracking.log_file(ckpt, names.CHECKPOINTS_DIR)
            if epoch in plan.snapshot_epochs:
                epoch_losses = losses[(epoch - 1) * plan.steps_per_epoch: epoch * plan.steps_per_epoch]
                model_id = _log_checkpoint_model(st, scfg, None, ckpt, epoch, plan)
                tracking.log_metrics({names.EPOCH_LOSS: sum(epoch_losses) / max(1, len(epoch_losses))}, step=epoch,
                                     model_id=model_id)


def _log_figures(figures: dict, step: int | None = None) -> None:
    for name, image in figures.items():
        tracking.log_image(image, name, step=step)
