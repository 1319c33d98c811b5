"""What the Prefect UI shows of a flow's results: a link to its MLflow run (and to its report page,
when one exists) and a small markdown table of the headline numbers, as flow run artifacts.

Flows call `publish_summary(flow_name, run_id)` once at their end. Publishing never fails a flow.
"""

from __future__ import annotations

import math

from prefect import get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from difflab import tracking

from difflab.names import REPORT_URL_TAG  # set by log_report: the summary links the page beside the run
SUMMARY_TAGS = ("profile", "backend", "device", "difflab.promotion")
MAX_ROWS = 40
"""Headline numbers only: a run with more metrics (per-digit agreement...) keeps the rest in MLflow."""


def _key(flow_name: str, what: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return f"{flow_name}-{what}".lower().replace("_", "-").replace(".", "-")


def _fmt(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def _numbers(run) -> tuple[dict[str, float], list[str]]:
    """A run's own metrics; a run without any (part_a's) shows its children's, by child. And the children."""
    children = tracking.child_runs(run.info.run_id)
    if run.data.metrics:
        return dict(run.data.metrics), [c.info.run_name for c in children]
    numbers = {}
    for child in children:
        for key, value in child.data.metrics.items():
            numbers[f"{child.info.run_name}/{key}"] = value
    return numbers, [c.info.run_name for c in children]


def summary_markdown(flow_name: str, runs: dict[str, object]) -> str:
    """One section per run: a link, a few tags, and a table of its headline numbers."""
    lines = [f"# {flow_name}: headline numbers", ""]
    for label, run in runs.items():
        lines += [f"## {label}: [{run.info.run_name}]({tracking.run_url(run.info.run_id)})", ""]
        tags = {k: run.data.tags[k] for k in SUMMARY_TAGS if k in run.data.tags}
        lines += [f"- {k}: {v}" for k, v in tags.items()] + ([""] if tags else [])
        numbers, children = _numbers(run)
        if children:
            lines += [f"- nested runs: {', '.join(sorted(children))}", ""]
        if numbers:
            keys = sorted(k for k in numbers if ".digit_" not in k)
            lines += ["| metric | value |", "|---|---:|"]
            lines += [f"| {k} | {_fmt(numbers[k])} |" for k in keys[:MAX_ROWS]]
            if len(keys) > MAX_ROWS:
                lines.append(f"| ... {len(keys) - MAX_ROWS} more in MLflow | |")
            lines.append("")
    return "\n".join(lines)


def publish_summary(flow_name: str, run_id: str, parts: dict[str, str] | None = None) -> None:
    """Link artifacts to the MLflow run (and report page) and a markdown table of headline numbers.
    parts: other runs to summarise too, e.g. {"part_b": id, "part_a": id} for the pipeline."""
    try:
        run = tracking.get_run(run_id)
        create_link_artifact(tracking.run_url(run_id), link_text=f"MLflow run {run.info.run_name} ({run_id[:8]})",
                             key=_key(flow_name, "mlflow-run"), description="This flow run's MLflow run")
        report = run.data.tags.get(REPORT_URL_TAG)
        if report:
            create_link_artifact(report, link_text="report", key=_key(flow_name, "report"),
                                 description="The run's report page")
        runs = {flow_name: run, **{label: tracking.get_run(rid) for label, rid in (parts or {}).items() if rid}}
        create_markdown_artifact(summary_markdown(flow_name, runs), key=_key(flow_name, "summary"),
                                 description=f"{flow_name} headline numbers (MLflow run {run_id})")
    except Exception as exc:  # noqa: BLE001 - the results are in MLflow whatever happens here
        get_run_logger().warning("could not publish the %s summary artifacts: %s", flow_name, exc)
