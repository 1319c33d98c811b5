"""How many samples the evaluation draws: planned at Part B's start from the probed sampling speeds
(`plan_evaluation`), then re-planned when the sampling starts from what is left of the budget
(`fit_time_left`). Plain PyTorch and the config classes only: the tasks log what they return.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from difflab import autotune
from difflab.config import PartBConfig
from difflab.planning import StagePlan, _minutes


@dataclass
class EvalPlan:
    num_samples: int
    source: str
    """budget or config."""
    budget_s: float | None = None
    seconds_per_sample: dict[str, float] = field(default_factory=dict)
    """Per DDPM: seconds to draw one sample (T steps) at the probed speed."""
    estimate_s: float = 0.0
    planned_at_start: int | None = None
    """Set by `fit_time_left`: the samples the plan at Part B's start gave, before the re-plan."""
    seconds_left: float | None = None
    """Set by `fit_time_left`: the seconds of the budget left for the sampling when it started."""

    def params(self) -> dict[str, Any]:
        out = {"plan.num_samples": self.num_samples, "plan.num_samples_source": self.source,
               "plan.estimate_s": round(self.estimate_s, 1)}
        if self.planned_at_start is not None:
            out.update({"plan.num_samples_at_start": self.planned_at_start,
                        "plan.seconds_left_for_sampling": self.seconds_left})
        if self.budget_s is not None:
            out["plan.budget_s"] = round(self.budget_s, 1)
        out.update({f"plan.seconds_per_sample.{k}": round(v, 4) for k, v in self.seconds_per_sample.items()})
        return out

    def announce(self) -> str:
        if self.planned_at_start is not None:
            return (f"evaluation: {self.num_samples} samples per DDPM (planned {self.planned_at_start} at start), "
                    f"sampling about {_minutes(self.estimate_s)} of the {_minutes(max(0.0, self.seconds_left))} "
                    f"left of the budget")
        what = "planned" if self.source == "budget" else "(configured)"
        about = f", sampling about {_minutes(self.estimate_s)}" if self.estimate_s else ""
        budget = f" of its {_minutes(self.budget_s)} budget" if self.budget_s else ""
        return f"evaluation: {self.num_samples} samples per DDPM {what}{about}{budget}"


def plan_evaluation(cfg: PartBConfig, plans: dict[str, StagePlan]) -> EvalPlan:
    """How many samples each DDPM draws for the evaluation: evaluation.num_samples, or with budget_samples
    the most that fit the evaluation's share of budget_minutes (less judge_share for the judge and the
    Frechet distances) at the probed sampling speeds, never below min_samples."""
    from difflab.stages import STAGES

    ev = cfg.evaluation
    per_sample = {}
    for key, plan in plans.items():
        st = STAGES[key]
        if st.generative and plan.sample_rate:
            per_sample[st.name] = st.config(cfg).num_timesteps / plan.sample_rate
    total = sum(per_sample.values())
    if ev.budget_samples and cfg.budget_minutes and total:
        budget_s = cfg.budget.seconds(cfg.budget_minutes, "evaluation")
        n = autotune.plan_samples(budget_s * (1 - cfg.budget.judge_share), total, ev.min_samples, ev.num_samples)
        return EvalPlan(n, "budget", budget_s, per_sample, n * total)
    return EvalPlan(ev.num_samples, "config", None, per_sample, ev.num_samples * total)


def fit_time_left(cfg: PartBConfig, eplan: EvalPlan, elapsed_s: float) -> EvalPlan:
    """The evaluation's samples re-planned when its sampling starts, from what is left of `budget_minutes`
    after `elapsed_s` seconds of Part B (the stages, the judge): the plan made at start cannot see the
    stages' overruns (snapshot figures, logging the models, a busy minute), so the evaluation absorbs them.
    Keeps back `budget.judge_share` of the evaluation's budget for what follows the sampling (the judge's
    predictions, the Frechet distances, the promotion), and plans the sampling to take the time left divided
    by `budget.sampling_margin` at the probed speed (the sampling ran up to 1.47x slower than probed). Never
    more samples than planned at start (a rerun that reuses its stages draws what the first run planned), never
    fewer than `evaluation.min_samples`.
    Unchanged when the samples were not planned from the budget."""
    if eplan.source != "budget" or not cfg.budget_minutes:
        return eplan
    per_sample = sum(eplan.seconds_per_sample.values())
    keep_back = cfg.budget.seconds(cfg.budget_minutes, "evaluation") * cfg.budget.judge_share
    left = cfg.budget_minutes * 60 - elapsed_s - keep_back
    n = autotune.plan_samples(left / cfg.budget.sampling_margin, per_sample, cfg.evaluation.min_samples,
                              eplan.num_samples)
    return EvalPlan(n, eplan.source, eplan.budget_s, eplan.seconds_per_sample, n * per_sample,
                    planned_at_start=eplan.num_samples, seconds_left=round(left, 1))
