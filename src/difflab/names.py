"""Every image, metric and artifact name a run logs and the report page reads, written once.

Writers (`stages`, `tasks/`) log under these names; readers (`page`) look them up here, so
renaming an image is one edit and `tests/test_names.py` fails when the page reads a name no stage
logs. Images are MLflow image keys: images/<name>.png, or a stepped image (step = epoch).
Run tags too: every `*_TAG` below is set by one writer (`tracking`, `tasks/`) and read by others (the
run doctor in `ops/runs.py`, the page's gathering, the summaries) from here.
"""

from __future__ import annotations

# ----------------------------------------------------------------- runs, and the order they run in
PART_B_STAGES: dict[str, str] = {"denoiser": "denoiser", "time": "time_ddpm", "class": "class_ddpm"}
"""The Part B stages in training order, written once: key (PartBConfig.stages, stages.STAGES) -> the
stage's MLflow run name and config section."""
PART_B_STAGE_TITLES: dict[str, str] = {"denoiser": "the single-step denoiser", "time": "the time-conditioned DDPM",
                                       "class": "the class-conditioned DDPM"}
"""What each stage is, in a few words, by key: the help of its `difflab train-<run>` command."""


def stage_flow(stage_name: str) -> str:
    """The Prefect flow that trains one stage alone: train_denoiser, train_time_ddpm, ... (its function in
    flows/part_b.py is <flow>_flow; its CLI command train-denoiser, train-time-ddpm, ...)."""
    return f"train_{stage_name}"
PART_B_RUN = "part_b"
PART_A_RUN = "part_a"
EVALUATION_RUN = "evaluation"


def sample_run(stage_name: str) -> str:
    """The run that draws from a trained stage: sample_time_ddpm, sample_class_ddpm."""
    return f"sample_{stage_name}"


def part_a_run(section: str) -> str:
    """A Part A section's run: part_a/<section>."""
    return f"{PART_A_RUN}/{section}"


def part_b_run_order() -> tuple[str, ...]:
    """Part B's runs in the order they run: the flow's run, each stage's training then sampling run
    (a stage that draws no samples has no sampling run), the evaluation."""
    per_stage = [run for name in PART_B_STAGES.values() for run in (name, sample_run(name))]
    return (PART_B_RUN, *per_stage, EVALUATION_RUN)


# ----------------------------------------------------------------- Part B images, by the run that logs them
NOISING_GRID = "noising_grid"
DENOISED_TEST = "denoised_test"
OOD_SIGMA_SWEEP = "ood_sigma_sweep"
LOSS_CURVE = "loss_curve"
SNAPSHOT_SAMPLES = "samples"
"""A DDPM's samples after each snapshot epoch (stepped)."""
FINAL_SAMPLES = "final_samples"
TRAJECTORY = "trajectory"
GIF_PATTERN = "*.gif"
"""The sampling run's animated trajectory, images/<stage>_denoising.gif."""
JUDGED_SAMPLES = "judged_samples"


def denoising_gif(stage_name: str) -> str:
    """File name of a sampling run's GIF (logged under images/)."""
    return f"{stage_name}_denoising.gif"


# ----------------------------------------------------------------- Part A images, by section
SAMPLE_STEPS = "sample_steps"
FORWARD_BLUR_ONE_STEP = "forward_blur_one_step"
ITERATIVE_STEPS = "iterative_steps"
DENOISE_COMPARED = "denoise_compared"
DENOISE_RESTORING = "denoise_restoring"
"""Part A 1.4 again from the noisiest later i_start where the iterative loop still restores (logged only then)."""
SAMPLES_UNGUIDED = "samples_unguided"
SAMPLES_CFG = "samples_cfg"
SDEDIT = "sdedit"
IMAGE_TO_IMAGE = "image_to_image"
INPAINT = "inpaint"
ANAGRAM_PREFIX = "anagram_"
HYBRID_PREFIX = "hybrid_"
STAGE2_SUFFIX = "_stage2"
"""DeepFloyd: the stage I image upsampled by stage II, logged as <name>_stage2."""


def anagram(i: int) -> str:
    return f"{ANAGRAM_PREFIX}{i}"


def hybrid(i: int, size: str) -> str:
    """size: "full" or "small"."""
    return f"{HYBRID_PREFIX}{i}_{size}"


def stage2(name: str) -> str:
    return f"{name}{STAGE2_SUFFIX}"


# ----------------------------------------------------------------- metrics
FINAL_LOSS = "final_loss"
TRAIN_SECONDS = "train_seconds"
EVAL_SECONDS = "eval_seconds"
TRAIN_LOSS = "train_loss"
"""Per optimizer step."""
EPOCH_LOSS = "epoch_loss"
LR = "lr"
MSE_ITERATIVE = "mse_iterative"
MSE_ONE_STEP = "mse_one_step"
MSE_BLUR = "mse_blur"
UNMASKED_MAX_ABS_CHANGE = "unmasked_max_abs_change"
RESTORE_MSE_ITERATIVE = "restore.mse_iterative"
RESTORE_MSE_ONE_STEP = "restore.mse_one_step"
REPAINTED_SHARE = "repainted_share"
"""Part A inpainting: the share of pixels the mask repaints, beside the change outside it (so a 0.0 is not vacuous)."""

# ----------------------------------------------------------------- artifacts
CHECKPOINTS_DIR = "checkpoints"
FINAL_CHECKPOINT = "checkpoints/final.pt"
IMAGES_DIR = "images"
SAMPLES_DIR = "samples"
SAMPLES_FILE = "samples.pt"
JUDGE_DIR = "judge"
HEADLINE_FILE = "headline.json"

REPORT_ARTIFACT = "report/report.html"
"""The write-up page on a flow's run (`tracking.log_report_page`; the MLflow UI opens it under Artifacts)."""

# ----------------------------------------------------------------- tags (on runs, logged models, experiments)
CACHE_KEY_TAG = "difflab.cache_key"
"""A stage run's reuse key (`provenance.cache_key`): a later run with the same key reuses it."""
STAGE_TAG = "difflab.stage"
REUSED_TAG = "difflab.reused_from"
"""On a `<stage> (reused)` run: the id of the run whose artifacts it reuses."""
ERROR_TAG = "difflab.error"
"""Why a run ended FAILED or KILLED, in words."""
HOST_TAG = "difflab.host"
PID_TAG = "difflab.pid"
PID_START_TAG = "difflab.pid_start"
"""Which process opened a run: the run doctor marks RUNNING runs FAILED once that process is gone."""
PREFECT_FLOW_RUN_TAG = "prefect.flow_run_id"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CHECKPOINT_TAG = "difflab.checkpoint"
"""On a logged model: `final`, or `epoch_0005` for a snapshot epoch's checkpoint."""
REPORT_URL_TAG = "difflab.report_url"
"""On the run: where the MLflow UI shows its page (the Prefect summary links it)."""
PROMOTION_TAG = "difflab.promotion"
"""On the Part B parent run: whether and why its models became the champion."""
RUN_NAME_TAG = "tags.mlflow.runName"
"""MLflow's run name as a `search_runs` column (the comparison's row label)."""
PROFILE_OVERRIDES_TAG = "profile_overrides"
"""On a Part B run: the values that differ from its profile (`k=v, ...`, or none), so a run's recorded profile
is never contradicted by its params unseen."""

# ----------------------------------------------------------------- what each run logs (the page's contract)
OPTIONAL_IMAGES = frozenset({DENOISE_RESTORING})
"""Images a run logs only when its result calls for them (the page marks their figures optional)."""

IMAGES: dict[str, tuple[str, ...]] = {
    "denoiser": (NOISING_GRID, LOSS_CURVE, DENOISED_TEST, OOD_SIGMA_SWEEP),
    "time_ddpm": (LOSS_CURVE, SNAPSHOT_SAMPLES),
    "class_ddpm": (LOSS_CURVE, SNAPSHOT_SAMPLES),
    "sample_time_ddpm": (FINAL_SAMPLES, TRAJECTORY, denoising_gif("time_ddpm")),
    "sample_class_ddpm": (FINAL_SAMPLES, TRAJECTORY, denoising_gif("class_ddpm")),
    "evaluation": (JUDGED_SAMPLES,),
    "part_a/sample_steps": (SAMPLE_STEPS,),
    "part_a/denoise": (FORWARD_BLUR_ONE_STEP, ITERATIVE_STEPS, DENOISE_COMPARED, DENOISE_RESTORING),
    "part_a/sample": (SAMPLES_UNGUIDED,),
    "part_a/cfg": (SAMPLES_CFG,),
    "part_a/sdedit": (SDEDIT,),
    "part_a/i2i": (IMAGE_TO_IMAGE,),
    "part_a/inpaint": (INPAINT,),
    "part_a/anagram": (anagram(0),),
    "part_a/hybrid": (hybrid(0, "full"), hybrid(0, "small")),
}
"""Run (stage or Part A section) -> the image names it logs (templated ones with index 0). Part A sections
on DeepFloyd also log stage2(name) for each."""


# ----------------------------------------------------------------- evaluation metrics (k: "time" or "class")
JUDGE_HELDOUT_ACCURACY = "judge.heldout_accuracy"
JUDGE_HELDOUT_ACCURACY_NOISY = "judge.heldout_accuracy_noisy"


def frechet(k: str) -> str:
    return f"{k}.frechet"


def frechet_floor(k: str) -> str:
    return f"{k}.frechet_real_floor"


def agreement(k: str) -> str:
    return f"{k}.agreement"


def confidence(k: str) -> str:
    return f"{k}.confidence"


def agreement_digit(k: str, digit: int) -> str:
    return f"{k}.agreement.digit_{digit}"


DENOISER_SIGMA_PREFIX = "denoiser.mse.sigma_"


def denoiser_at_sigma(quantity: str, sigma: float) -> str:
    """quantity: "mse" or "psnr"."""
    return f"denoiser.{quantity}.sigma_{sigma}"
