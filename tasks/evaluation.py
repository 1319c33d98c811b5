"""Prefect task: quality numbers for a Part B run from an independent judge classifier.

The judge is trained once per data set (checksum) and judge config, and cached on
disk; each trained stage then says how it is judged (`Stage.evaluate`): the
denoiser's MSE/PSNR per sigma, the DDPMs' Frechet distances beside the real-vs-real
floor, and how often guided samples are read as the digit asked for.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from difflab import evaluation_plan, names, planning, stages, tracking
from difflab.config import PartBConfig
from difflab.data import MnistData, to_float
from difflab.files import CorruptFileError, set_aside
from difflab.judge import judge_accuracy, judge_accuracy_corrupted, load_judge, save_judge, train_judge
from difflab.train import pick_device
from tasks.progress import Ticker
from tasks.refs import DataRef, StageRef
from tasks.retry import retry_if_transient


def get_judge(cfg: PartBConfig, data: DataRef, mnist: MnistData):
    """Load the cached judge for this data set, or train and cache it; returns (judge, accuracy, cached, path)."""
    key = tracking.cache_key(data.checksum, cfg.evaluation.judge.model_dump())
    path = Path(cfg.evaluation.judge_cache) / f"judge-{key}.pt"
    judge = None
    if path.exists():
        try:
            judge = load_judge(path)
        except CorruptFileError as exc:  # issue 8: a corrupt cache entry is set aside and the judge retrained
            set_aside(path, str(exc))
    cached = judge is not None
    if judge is None:
        judge = train_judge(mnist.train_images, mnist.train_labels, cfg.evaluation.judge)
        save_judge(judge, path)
    return judge, judge_accuracy(judge, mnist.test_images, mnist.test_labels), cached, path


@task(name="evaluate", retries=1, retry_delay_seconds=5,
      retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def evaluate(cfg: PartBConfig, data: DataRef, refs: dict[str, StageRef], parent_run_id: str) -> dict[str, float]:
    """Nested `evaluation` run; returns the headline metrics (also logged to the parent as eval.*).

    Each stage is evaluated with the levers resolved for this machine (the probe cached by its training),
    and with budget_samples the number of samples is sized to the evaluation's share of the budget."""
    tracking.configure(cfg.tracking)
    logger = get_run_logger()
    device = pick_device(cfg.device, cfg.cpu_threads)
    mnist = MnistData.load(data.path)
    real_train, real_test = to_float(mnist.train_images), to_float(mnist.test_images)
    plans = {key: planning.resolve_stage(cfg, stages.STAGES[key], real_train, mnist.train_labels, device)
             for key in refs}
    eplan = evaluation_plan.plan_evaluation(cfg, plans)
    ev = cfg.evaluation.model_copy(update={"num_samples": eplan.num_samples})
    logger.info(eplan.announce())
    with tracking.run("evaluation", cfg.tracking.experiment, parent_run_id,
                      {names.STAGE_TAG: "evaluation", "data_checksum": data.checksum}):
        started = time.perf_counter()
        with Ticker("evaluation: the judge (trained once per data set, then cached)", 0.0, logger.info):
            judge, acc, cached, judge_path = get_judge(cfg, data, mnist)
        tracking.log_params({**{f"judge.{k}": v for k, v in ev.judge.model_dump().items()}, "judge.cached": cached})
        acc_noisy = judge_accuracy_corrupted(judge, mnist.test_images, mnist.test_labels)
        tracking.log_metrics({names.JUDGE_HELDOUT_ACCURACY: acc, names.JUDGE_HELDOUT_ACCURACY_NOISY: acc_noisy})
        tracking.log_file(judge_path, names.JUDGE_DIR)
        headline = {"judge_accuracy": acc, "judge_accuracy_noisy": acc_noisy}
        sampling_planned = False
        for key, ref in sorted(refs.items(), key=lambda kv: stages.STAGES[kv[0]].generative):
            st = stages.STAGES[key]
            if st.generative and not sampling_planned:  # what is left of the budget, after the stages and the judge
                eplan, ev = _replan(cfg, eplan, parent_run_id, logger)
                sampling_planned = True
            estimate = ev.num_samples * eplan.seconds_per_sample.get(st.name, 0.0)
            with Ticker(f"evaluation of {st.name}" + (f" ({ev.num_samples} samples)" if st.generative else ""),
                        estimate, logger.info):
                result = st.evaluate(stages.load(ref.checkpoint, device), plans[key].apply(st.config(cfg)), ev,
                                     judge, real_train, real_test, cfg.seed)
            tracking.log_metrics(result.metrics)
            if ref.model_id:  # the model's own numbers, which the promotion gate reads
                tracking.link_model_metrics(ref.model_id, result.headline)
            headline.update(result.headline)
            for name, table in result.tables.items():
                tracking.log_dict(table, name)
            for name, image in result.figures.items():
                tracking.log_image(image, name)
        if not sampling_planned:
            tracking.log_params({"num_samples": ev.num_samples, **eplan.params()})
        tracking.log_metrics({names.EVAL_SECONDS: time.perf_counter() - started})
        tracking.log_text(json.dumps(headline, indent=2), names.HEADLINE_FILE)
    get_run_logger().info("evaluation: %s", ", ".join(f"{k}={v:.4g}" for k, v in headline.items()))
    return headline


def _replan(cfg: PartBConfig, eplan: evaluation_plan.EvalPlan, parent_run_id: str, logger):
    """The samples re-planned from the budget left since the Part B run started (evaluation_plan.fit_time_left);
    logs `num_samples` and `plan.*` (the final number), returns (plan, evaluation config)."""
    start_ms = tracking.get_run(parent_run_id).info.start_time
    elapsed = max(0.0, time.time() - start_ms / 1000) if start_ms else 0.0
    replanned = evaluation_plan.fit_time_left(cfg, eplan, elapsed)
    if replanned is not eplan:
        logger.info(replanned.announce())
    tracking.log_params({"num_samples": replanned.num_samples, **replanned.params()})
    return replanned, cfg.evaluation.model_copy(update={"num_samples": replanned.num_samples})
