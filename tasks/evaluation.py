"""Prefect task: quality numbers for a Part B run from an independent judge classifier.

The judge is trained once per data set (checksum) and judge config, and cached on
disk; every run then reports the denoiser's MSE/PSNR per sigma, how often the
class-conditioned samples are judged to be the digit asked for, and Frechet
distances in the judge's feature space beside the real-vs-real floor.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from difflab import tracking, viz
from difflab.config import PartBConfig
from difflab.data import MnistData, to_float
from difflab.metrics import (class_agreement, denoiser_metrics, frechet_vs_real, judge_accuracy, judge_predict,
                             load_judge, save_judge, train_judge)
from difflab.sampling import sample_class_conditioned, sample_time_conditioned, schedule_from_extra
from difflab.train import load_model, pick_device
from difflab.unet import NUM_CLASSES
from tasks.refs import DataRef, StageRef

SHOWN_PER_DIGIT = 10
"""Judged samples shown per digit in the labelled figure."""


def get_judge(cfg: PartBConfig, data: DataRef, mnist: MnistData):
    """Load the cached judge for this data set, or train and cache it; returns (judge, accuracy, cached)."""
    key = tracking.cache_key(data.checksum, cfg.evaluation.judge.model_dump())
    path = Path(cfg.evaluation.judge_cache) / f"judge-{key}.pt"
    cached = path.exists()
    judge = load_judge(path) if cached else train_judge(mnist.train_images, mnist.train_labels, cfg.evaluation.judge)
    if not cached:
        save_judge(judge, path)
    return judge, judge_accuracy(judge, mnist.test_images, mnist.test_labels), cached, path


def _judged_figure(judge, samples: torch.Tensor, labels: torch.Tensor):
    """One row per requested digit, labelled with how many of those shown the judge read as that digit."""
    pred = judge_predict(judge, samples).argmax(1)
    rows, names = [], []
    for d in range(NUM_CLASSES):
        idx = (labels == d).nonzero().flatten()[:SHOWN_PER_DIGIT]
        rows.append(samples[idx])
        names.append(f"{d}: {int((pred[idx] == d).sum())}/{len(idx)}")
    return viz.labeled_grid(rows, names, None, title="class-conditioned samples: requested digit, judged correct")


def _draw(model, schedule, n: int, batch: int, seed: int, labels: torch.Tensor | None, guidance: float,
          fast=None):
    out = []
    for i in range(0, n, batch):
        if labels is None:
            x, _ = sample_time_conditioned(model, schedule, min(batch, n - i), seed + i, fast=fast)
        else:
            x, _ = sample_class_conditioned(model, schedule, labels[i:i + batch], guidance, seed + i, fast=fast)
        out.append(x)
    return torch.cat(out)


@task(name="evaluate", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def evaluate(cfg: PartBConfig, data: DataRef, stages: dict[str, StageRef], parent_run_id: str) -> dict[str, float]:
    """Nested `evaluation` run; returns the headline metrics (also logged to the parent as eval.*)."""
    tracking.configure(cfg.tracking)
    log = get_run_logger()
    ev = cfg.evaluation
    device = pick_device(cfg.device, cfg.cpu_threads)
    mnist = MnistData.load(data.path)
    real_train, real_test = to_float(mnist.train_images), to_float(mnist.test_images)
    headline: dict[str, float] = {}
    with tracking.run("evaluation", cfg.tracking.experiment, parent_run_id,
                      {tracking.STAGE_TAG: "evaluation", "data_checksum": data.checksum}):
        started = time.perf_counter()
        judge, acc, cached, judge_path = get_judge(cfg, data, mnist)
        tracking.log_params({**{f"judge.{k}": v for k, v in ev.judge.model_dump().items()},
                             "num_samples": ev.num_samples, "judge.cached": cached})
        tracking.log_metrics({"judge.heldout_accuracy": acc})
        tracking.log_file(judge_path, "judge")
        headline["judge_accuracy"] = acc

        if "denoiser" in stages:
            model, extra = load_model(stages["denoiser"].checkpoint, device)
            sweep = cfg.denoiser.sigma_sweep
            res = denoiser_metrics(lambda z: model(z), real_test, sweep, seed=cfg.seed, device=device)
            for sigma, m in res.items():
                tracking.log_metrics({f"denoiser.mse.sigma_{sigma}": m["mse"], f"denoiser.psnr.sigma_{sigma}": m["psnr"]})
            trained = res[float(cfg.denoiser.sigma)]
            headline.update({"denoiser_mse": trained["mse"], "denoiser_psnr": trained["psnr"]})

        for stage in ("time", "class"):
            if stage not in stages:
                continue
            scfg = cfg.time_ddpm if stage == "time" else cfg.class_ddpm
            model, extra = load_model(stages[stage].checkpoint, device)
            schedule = schedule_from_extra(extra)
            labels = None
            if stage == "class":
                labels = torch.arange(ev.num_samples) % NUM_CLASSES
            samples = _draw(model, schedule, ev.num_samples, ev.sample_batch_size, cfg.seed, labels, scfg.guidance,
                            scfg.fast)
            fd = frechet_vs_real(judge, samples, real_train, real_test, seed=cfg.seed)
            tracking.log_metrics({f"{stage}.frechet": fd["frechet"], f"{stage}.frechet_real_floor": fd["frechet_real_floor"]})
            headline.update({f"{stage}_frechet": fd["frechet"], "frechet_real_floor": fd["frechet_real_floor"],
                             f"{stage}_frechet_ratio": fd["frechet"] / max(fd["frechet_real_floor"], 1e-9)})
            if labels is not None:
                agree = class_agreement(judge, samples, labels)
                tracking.log_metrics({"class.agreement": agree["agreement"], "class.confidence": agree["confidence"],
                                      **{f"class.agreement.digit_{d}": v["agreement"]
                                         for d, v in agree["per_digit"].items()}})
                tracking.log_dict(agree, "class_agreement.json")
                headline.update({"class_agreement": agree["agreement"], "class_confidence": agree["confidence"]})
                tracking.log_image(_judged_figure(judge, samples, labels), "judged_samples")
        tracking.log_metrics({"eval_seconds": time.perf_counter() - started})
        tracking.log_text(json.dumps(headline, indent=2), "headline.json")
    log.info("evaluation: %s", ", ".join(f"{k}={v:.4g}" for k, v in headline.items()))
    return headline
