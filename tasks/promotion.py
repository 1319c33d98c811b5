"""Model promotion: every Part B run registers its models, only a good one becomes the `champion`.

Each registered version is tagged with the run's profile, flow run and headline numbers, so the
MLflow *Models* page tells a smoke model from a real one. The champion alias
(models:/difflab-class-ddpm@champion, what Part A and its schedule use) moves only when
`tracking.promote` allows it: `auto` asks the evaluation to pass `tracking.gate` and never
promotes `gate.skip_profiles` (tiny) or sweep points; `always` and `never` say what they mean.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from difflab import tracking
from difflab.config import PartBConfig, TrackingConfig
from difflab.names import PROMOTION_TAG
from difflab.stages import STAGES
from tasks.refs import StageRef
from tasks.retry import retry_if_transient

GATED_STAGE = "class"
"""The stage whose final logged model the gate reads (its linked class_agreement / class_frechet)."""


def promotion_decision(cfg: TrackingConfig, profile: str, in_sweep: bool,
                       evaluation: dict[str, float]) -> tuple[bool, str]:
    """(promote?, why): pure, so the gate is tested without MLflow."""
    if cfg.promote == "never":
        return False, "tracking.promote=never"
    if cfg.promote == "always":
        return True, "tracking.promote=always"
    if profile in cfg.gate.skip_profiles:
        return False, f"profile {profile} never promotes under promote=auto (tracking.gate.skip_profiles)"
    if in_sweep:
        return False, "sweep points never promote under promote=auto"
    checks = []
    gate = cfg.gate
    if gate.min_class_agreement is not None:
        value = evaluation.get("class_agreement")
        if value is None:
            return False, "no eval.class_agreement to check (evaluation off, or no class stage)"
        if value < gate.min_class_agreement:
            return False, f"class agreement {value:.3f} < gate {gate.min_class_agreement:g}"
        checks.append(f"class agreement {value:.3f} >= {gate.min_class_agreement:g}")
    if gate.max_class_frechet is not None:
        value = evaluation.get("class_frechet")
        if value is None:
            return False, "no eval.class_frechet to check"
        if value > gate.max_class_frechet:
            return False, f"class Frechet {value:.1f} > gate {gate.max_class_frechet:g}"
        checks.append(f"class Frechet {value:.1f} <= {gate.max_class_frechet:g}")
    return True, "passed the gate: " + (", ".join(checks) or "no thresholds set")


def _in_sweep(parent_run_id: str) -> bool:
    outer = tracking.get_run(parent_run_id).data.tags.get("mlflow.parentRunId")
    return bool(outer) and tracking.get_run(outer).data.tags.get("flow") == "sweep"


def gate_metrics(stages: dict[str, StageRef], evaluation: dict[str, float]) -> dict[str, float]:
    """What the gate reads: the metrics linked to the gated stage's final logged model (MLflow 3's model
    metrics, written by the evaluation), else the flow's evaluation (a stage trained before models were
    logged)."""
    ref = stages.get(GATED_STAGE)
    if ref is None or not ref.model_id:
        return evaluation
    return tracking.logged_model_metrics(ref.model_id)


@task(name="promote-models", retries=1, retry_delay_seconds=3,
      retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def promote_models(config: PartBConfig, parent_run_id: str, stages: dict[str, StageRef],
                   evaluation: dict[str, float]) -> dict:
    """Tag this run's model versions; move the champion alias to them when the decision says so."""
    tracking.configure(config.tracking)
    tcfg = config.tracking
    if not tcfg.register_models:
        return {"promoted": False, "reason": "tracking.register_models=false", "versions": {}}
    promote, reason = promotion_decision(tcfg, config.profile, _in_sweep(parent_run_id),
                                         gate_metrics(stages, evaluation))
    versions = {}
    for stage, ref in stages.items():
        name = STAGES[stage].registered_model(tcfg.model_name_prefix)
        found = tracking.model_versions_of_run(name, ref.run_id)
        if not found:
            continue
        version = found[0].version
        tracking.tag_model_version(name, version, {
            "profile": config.profile, "difflab.parent_run_id": parent_run_id,
            **{f"metric.{k}": f"{v:.6g}" for k, v in ref.metrics.items()},
            **{f"eval.{k}": f"{v:.6g}" for k, v in evaluation.items()}})
        if promote:
            tracking.set_model_alias(name, tcfg.champion_alias, version)
        versions[name] = version
    verdict = f"{tcfg.champion_alias}: {'moved' if promote and versions else 'not moved'} ({reason})"
    tracking.log_tags({PROMOTION_TAG: verdict}, parent_run_id)
    get_run_logger().info("model promotion: %s; versions %s", verdict, versions)
    return {"promoted": promote and bool(versions), "reason": reason, "versions": versions}
