"""Gathering a run for the page: a pipeline, part_b or part_a run tree read back from MLflow (through
`difflab.tracking`'s search and download functions) as the plain `RunData` the page renders from."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from difflab import tracking
from difflab.names import REUSED_TAG, STAGE_TAG
from difflab.page.model import MIME, PageImage, RunData, StageData

PAGE_FLOWS = ("pipeline", "part_b", "part_a")
"""The flows whose runs the page covers (tags.flow of a whole flow's run)."""


def gather_run(run_id: str) -> RunData:
    """A pipeline, part_b or part_a run and every stage under it, with images, as `RunData`.

    Errors: ValueError (one line with the fix) for an unknown run id or a run that is not a whole flow's run."""
    top = tracking.find_run(run_id)
    if top is None:
        raise ValueError(f"run {run_id} not found in {tracking.current_uri()}; give a run id from "
                         "`difflab pipeline`'s output or the MLflow UI (or set MLFLOW_TRACKING_URI)")
    flow = top.data.tags.get("flow", "")
    if flow not in PAGE_FLOWS:
        raise ValueError(f"run {run_id} is a {flow or 'stage'} run; give a pipeline, part_b or part_a run "
                         "(the write-up covers a whole flow run)")
    stages: dict = {}
    parts = [top] if flow != "pipeline" else [r for r in tracking.child_runs(run_id)
                                                    if r.data.tags.get("flow") in PAGE_FLOWS]
    for part in parts:
        stages[part.data.tags["flow"]] = _stage_data(part, with_images=False)
        for child in tracking.child_runs(part.info.run_id):
            st = _stage_data(child)
            stages[st.name] = st
    return RunData(run_id=run_id, name=top.info.run_name, url=tracking.run_url(run_id), flow=flow,
                   status=top.info.status,
                   start_ms=top.info.start_time, seconds=_seconds(top.info), tracking_uri=tracking.current_uri(),
                   params=dict(top.data.params), metrics=dict(top.data.metrics), tags=_user_tags(top), stages=stages)


def _stage_data(run, with_images: bool = True) -> StageData:
    """One run as StageData; a `<stage> (reused)` run shows the original run's images and metrics."""
    tags = run.data.tags
    name = tags.get(STAGE_TAG) or tags.get("flow") or run.info.run_name.removesuffix(" (reused)")
    source_id = tags.get(REUSED_TAG)
    source = run
    if source_id:  # the original deleted: no images then
        source = tracking.find_run(source_id) or run
    return StageData(name=name, run_id=run.info.run_id, url=tracking.run_url(run.info.run_id),
                     status=run.info.status,
                     seconds=_seconds(run.info), reused_from=source_id,
                     reused_from_url=tracking.run_url(source_id) if source_id else "",
                     original_seconds=_seconds(source.info) if source is not run else None,
                     params={**source.data.params, **run.data.params},
                     metrics={**source.data.metrics, **run.data.metrics}, tags=_user_tags(run),
                     images=_images(source.info.run_id) if with_images else [])


def _images(run_id: str) -> list[PageImage]:
    """Every image under images/ of a run (stepped ones with their step; MLflow's compressed copies skipped)."""
    files = [p for p in tracking.artifact_paths(run_id, "images")
             if Path(p).suffix.lower() in MIME and "+compressed" not in p and "%compressed" not in p]
    if not files:
        return []
    out = []
    with tempfile.TemporaryDirectory(prefix="difflab-report-") as tmp:
        local = tracking.download(run_id, "images", tmp)
        for path in files:
            stem, step = tracking.split_stepped(Path(path).stem)
            raw = (local / Path(path).relative_to("images")).read_bytes()
            out.append(PageImage.from_bytes(stem, path, raw, step))
    return out


def _seconds(info) -> float | None:
    if not info.start_time:
        return None
    return ((info.end_time or int(time.time() * 1000)) - info.start_time) / 1000


def _user_tags(run) -> dict[str, str]:
    return {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}


