"""A saved view of the MLflow UI's runs page that opens on the training runs' snapshot images, stored server-side.

MLflow 3.17's runs page keeps its layout (charts, sort, run visibility) in the browser, so a fresh browser's chart
view shows the first 10 rows of the run table, whatever they are. Its "Views" menu (top right of the runs page)
lists saved views, which the UI stores as experiment tags `mlflow.sharedViewState.<id>` holding
`{"name", "createdAt", "updatedAt", "state"}` with the page state as a JSON string; the address
`#/experiments/<id>/runs?viewStateShareKey=<id>` opens one (read from the UI's bundle, mlflow 3.17.2:
`useSharedExperimentViewState`; a saved view restores sort, filter, group-by, charts and the run-visibility mode,
never which rows are expanded, pinned or hidden).

The view written here, "Training: snapshot images by epoch", lists the top-level runs (`pipeline-<profile>`,
`part_b-<profile>`) and opens on an Image grid per training stage: `denoiser.denoised_test`, `time_ddpm.samples`,
`class_ddpm.samples`, the stage runs' stepped images (step = epoch) that the top-level run carries again
(`tracking.copy_stepped_images`). The stage runs themselves cannot be charted this way: the UI drops all of a run's
images when its `images/` folder holds any file that `mlflow.log_image(key=..., step=...)` did not write, and the
stage runs keep their loss curve there (`images/loss_curve.png`, a name the page and tests rely on).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from difflab import names

SAVED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
"""The experiment-tag prefix MLflow 3.17's UI reads its saved views from."""
SHARE_KEY_PARAM = "viewStateShareKey"
CHART_MODE = "compareRunsMode=CHART"
TRAINING_VIEW_ID = "difflab-training-images"
TRAINING_VIEW_NAME = "Training: snapshot images by epoch"
IMAGES_SECTION = "difflab-snapshot-images"
IMAGES_SECTION_NAME = "Training snapshots (step = epoch; drag Step to scrub)"
NO_STEP = 0
"""A grid's step when the run that wrote the view has no such image (the stage was off): no epoch is 0."""
CARD_HEIGHT_PX = 640
"""The image cards' height (the UI's default, 360 px, leaves a sample grid a thumbnail); three to a row."""
CARDS_PER_ROW = 3
ROWS_IN_VIEW = "FIRST_10_RUNS"
"""The UI's own default: the 10 newest top-level runs get a column in each image grid."""

STEPPED_IMAGES: dict[str, str] = {
    names.PART_B_STAGES["denoiser"]: names.DENOISED_TEST,
    names.PART_B_STAGES["time"]: names.SNAPSHOT_SAMPLES,
    names.PART_B_STAGES["class"]: names.SNAPSHOT_SAMPLES,
}
"""Stage run name -> its stepped image key (logged after each snapshot epoch)."""


def training_image_keys() -> list[str]:
    """The keys the top-level run carries the stages' stepped images under: `<stage run>.<key>`, in training order
    (the naming of `tracking.copy_stepped_images`)."""
    return [f"{stage}.{key}" for stage, key in STEPPED_IMAGES.items()]


def training_view_state(steps: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The runs page state of the training view: one Image grid card per stage, in a section of their own
    (without each run's params under its name: a pipeline run has some 200, which push the image out of the card);
    search, sort and visibility are the UI's defaults (newest first, first 10 rows), so the newest `make run`s
    are in view. steps: image key -> the epoch its grid opens on (the UI shows "No image logged at this step"
    for an epoch a run has no image at, so give one the newest run has: its last snapshot)."""
    steps = steps or {}
    charts = [{"uuid": f"difflab-image-{key}", "type": "IMAGE", "imageKeys": [key],
               "step": int(steps.get(key, NO_STEP)), "showRunParams": False, "isGenerated": False, "deleted": False,
               "metricSectionId": IMAGES_SECTION, "displayName": key} for key in training_image_keys()]
    sections = [{"uuid": IMAGES_SECTION, "name": IMAGES_SECTION_NAME, "display": True, "isReordered": False,
                 "deleted": False, "isGenerated": False, "cardHeight": CARD_HEIGHT_PX, "columns": CARDS_PER_ROW}]
    return {"searchFilter": "", "runsHiddenMode": ROWS_IN_VIEW, "compareRunCharts": charts,
            "compareRunSections": sections, "isAccordionReordered": False, "hideEmptyCharts": False}


def saved_view_tag(state: dict[str, Any], created_ms: int, view_id: str = TRAINING_VIEW_ID,
                   name: str = TRAINING_VIEW_NAME) -> tuple[str, str]:
    """(experiment tag key, value) of a saved view, in the envelope MLflow 3.17's UI reads; created_ms: epoch ms."""
    envelope = {"name": name, "createdAt": int(created_ms), "updatedAt": int(created_ms),
                "state": json.dumps(state, separators=(",", ":"))}
    return SAVED_VIEW_TAG_PREFIX + view_id, json.dumps(envelope, separators=(",", ":"))


def view_url(base: str, experiment_id: str, model_training: str, view_id: str = TRAINING_VIEW_ID) -> str:
    """Where the saved view opens, in the chart view; base: the UI's address (http://127.0.0.1:5000),
    model_training: the query that keeps MLflow 3.17 off its GenAI overview (`tracking.UI_MODEL_TRAINING`)."""
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{SHARE_KEY_PARAM}={view_id}&{CHART_MODE}"
            f"&{model_training}")
