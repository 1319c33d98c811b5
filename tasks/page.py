"""The task that writes a run's write-up page: gathered from MLflow, rendered to one HTML file, logged back
to the run.

`difflab report` calls `write_report`; the pipeline ends with `log_report` so the page opens from
its top-level run in the MLflow UI (Artifacts -> report/report.html).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from difflab import page, tracking
from difflab.config import TrackingConfig
from difflab.names import REPORT_ARTIFACT, REPORT_URL_TAG
from difflab.page.gather import gather_run

OUTPUT_DIR = Path("outputs") / "report"


def default_output(run_ids: Sequence[str]) -> Path:
    return OUTPUT_DIR / ("report-" + "-vs-".join(r[:8] for r in run_ids) + ".html")


def write_report(run_ids: Sequence[str], output: str | Path | None = None, experiment: str = "difflab",
                 config: page.PageConfig | None = None) -> Path:
    """Render the page for these runs (none: the newest finished pipeline run) to output; returns its path."""
    ids = list(run_ids)
    if not ids:
        newest = tracking.newest_run(experiment, "pipeline")
        if newest is None:
            raise ValueError(f"no finished pipeline run in experiment {experiment!r} at {tracking.tracking_uri()}; "
                             "run `difflab pipeline` first, or give a run id: difflab report RUN_ID")
        ids = [newest]
    runs = [gather_run(r) for r in ids]
    path = Path(output) if output else default_output(ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page.render(runs, config), encoding="utf-8")
    return path


@task(name="report", cache_policy=NO_CACHE)
def log_report(run_id: str, tracking_cfg: TrackingConfig) -> str:
    """Write the run's page locally and log it to the run as report/report.html; returns the local path."""
    tracking.configure(tracking_cfg)
    path = write_report([run_id], experiment=tracking_cfg.experiment)
    tracking.log_report_page(run_id, path)
    tracking.log_tags({REPORT_URL_TAG: tracking.artifact_url(run_id, REPORT_ARTIFACT)}, run_id)
    get_run_logger().info("write-up page: %s (and %s in MLflow run %s)", path.resolve(), REPORT_ARTIFACT,
                          run_id)
    return str(path.resolve())
