"""Run comparison (`difflab compare`, the sweep's table): reports from the DataFrame `mlflow.search_runs` returns, in pandas and
matplotlib only: a table of what differs between runs and how they scored, as Markdown and
CSV, and plots of overlaid loss curves and metric bars.

Fetching the runs is `difflab.tracking`'s job; this module never talks to MLflow, so it is tested
on hand-made frames.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from difflab import names, viz
from difflab.names import RUN_NAME_TAG
from difflab.viz import figure_to_image

PARAM_PREFIX = "params."
METRIC_PREFIX = "metrics."

Curves = Mapping[str, Mapping[str, Sequence[tuple[float, float]]]]
"""label (a run) -> metric key -> [(step, value), ...], as MLflow's metric history gives them."""


class ReportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    float_format: str = "{:.4g}"
    """How Markdown shows floats; the CSV keeps full precision."""
    panel_width: float = Field(6.0, gt=0)
    panel_height: float = Field(3.5, gt=0)
    bar_width_per_run: float = Field(0.6, gt=0)
    """Bar plots widen with the number of runs so labels stay readable."""
    dpi: int = Field(100, gt=0)
    label_rotation: float = 30.0
    bar_columns: int = Field(4, gt=0)
    """Metric bar panels per row of the grid."""
    stage_order: list[str] = Field(default_factory=lambda: [
        *names.PART_B_STAGES.values(), *map(names.sample_run, names.PART_B_STAGES.values()), "eval"])
    """Metric columns follow the pipeline: grouped by their stage prefix in this order, then the rest."""


FAILED_STATUSES = ("FAILED", "KILLED")


def drop_failed(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Runs that did not fail (a FAILED parent's numbers are partial); returns (kept, ids of those dropped)."""
    if "status" not in df.columns:
        return df, []
    failed = df["status"].isin(FAILED_STATUSES)
    dropped = df.loc[failed, "run_id"].tolist() if "run_id" in df.columns else [str(i) for i in df.index[failed]]
    return df.loc[~failed].reset_index(drop=True), dropped


def stage_ordered(metric_cols: Sequence[str], order: Sequence[str]) -> list[str]:
    """Metric columns grouped by stage (the prefix before the first dot) in pipeline order; stable within."""
    def rank(col: str) -> int:
        stage = col.removeprefix(METRIC_PREFIX).split(".", 1)[0]
        return order.index(stage) if stage in order else len(order)

    return sorted(metric_cols, key=rank)


def _run_labels(df: pd.DataFrame) -> pd.Series:
    """run_name where there is one (column or MLflow's runName tag), else the run id."""
    names = pd.Series([None] * len(df), index=df.index, dtype=object)
    for col in ("run_name", RUN_NAME_TAG):
        if col in df.columns:
            names = names.fillna(df[col])
    if "run_id" in df.columns:
        names = names.fillna(df["run_id"])
    names = names.astype(str)
    if names.duplicated(keep=False).any():  # e.g. every part_b-tiny: tell them apart by run id, else position
        ids = df["run_id"].astype(str).str[:8] if "run_id" in df.columns else pd.Series(
            [f"#{i + 1}" for i in range(len(df))], index=df.index)
        dup = names.duplicated(keep=False)
        names = names.where(~dup, names + " (" + ids + ")")
    return names


def _differs(column: pd.Series) -> bool:
    """True when runs disagree; a param missing from some runs counts as differing."""
    return column.astype(object).where(column.notna(), None).map(repr).nunique() > 1


def comparison_table(df: pd.DataFrame, metrics: Sequence[str] | None = None,
                     cfg: ReportConfig | None = None) -> pd.DataFrame:
    """One row per run: run_name (distinct), run_id, the params that differ between runs, then the metrics.

    metrics: names with or without the "metrics." prefix, in that order; None takes every metric some
    run has, ordered by stage (cfg.stage_order).
    Params equal in every run are dropped, since they say nothing about why runs differ.
    """
    if df.empty:
        raise ValueError("no runs to compare; check the experiment name and the search filter")
    available = [c for c in df.columns if c.startswith(METRIC_PREFIX)]
    if metrics is None:
        metric_cols = stage_ordered([c for c in available if df[c].notna().any()], (cfg or ReportConfig()).stage_order)
    else:
        metric_cols = [m if m.startswith(METRIC_PREFIX) else METRIC_PREFIX + m for m in metrics]
        missing = [m for m in metric_cols if m not in df.columns]
        if missing:
            raise KeyError(f"metrics {missing} are logged by none of these runs; available: {available}")
    param_cols = [c for c in df.columns if c.startswith(PARAM_PREFIX) and _differs(df[c])]
    table = pd.DataFrame({"run_name": _run_labels(df)}, index=df.index)
    if "run_id" in df.columns:
        table["run_id"] = df["run_id"]
    for col in param_cols:
        table[col] = df[col]
    for col in metric_cols:
        table[col] = pd.to_numeric(df[col], errors="coerce")
    return table.reset_index(drop=True)


def _cell(value: object, float_format: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        text = float_format.format(value)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(table: pd.DataFrame, cfg: ReportConfig | None = None) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned), without the tabulate package."""
    cfg = cfg or ReportConfig()
    columns = [str(c) for c in table.columns]
    numeric = [pd.api.types.is_numeric_dtype(table[c]) for c in table.columns]
    header = "| " + " | ".join(_cell(c, cfg.float_format) for c in columns) + " |"
    rule = "|" + "|".join("---:" if num else "---" for num in numeric) + "|"
    rows = ["| " + " | ".join(_cell(v, cfg.float_format) for v in row) + " |"
            for row in table.itertuples(index=False, name=None)]
    return "\n".join([header, rule, *rows]) + "\n"


def write_csv(table: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return path


def overlay_curves(curves: Curves, title: str = "training curves", log_scale: bool = True,
                   cfg: ReportConfig | None = None) -> Image.Image:
    """One panel per metric key, every run's curve overlaid on it, so runs compare at a glance."""
    cfg = cfg or ReportConfig()
    keys = sorted({key for series in curves.values() for key in series})
    if not keys:
        raise ValueError("no curves to plot; pass {run label: {metric key: [(step, value), ...]}}")
    plt = viz.pyplot()
    fig, axes = plt.subplots(len(keys), 1, figsize=(cfg.panel_width, cfg.panel_height * len(keys)),
                             dpi=cfg.dpi, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        for label, series in curves.items():
            points = sorted(series.get(key, []))
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, linewidth=1.2, label=str(label))
        if log_scale and all(v > 0 for s in curves.values() for _, v in s.get(key, [])):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.legend(fontsize=7)
    axes[0, 0].set_title(title)
    fig.tight_layout()
    return figure_to_image(fig)


def metric_bars(table: pd.DataFrame, metrics: Sequence[str] | None = None, label_column: str = "run_name",
                cfg: ReportConfig | None = None) -> Image.Image:
    """One bar panel per metric in a grid of cfg.bar_columns, one bar per run (a comparison_table's rows)."""
    cfg = cfg or ReportConfig()
    if metrics is None:
        cols = [c for c in table.columns if c.startswith(METRIC_PREFIX)]
    else:
        cols = [m if m in table.columns else METRIC_PREFIX + m for m in metrics]
    missing = [c for c in cols if c not in table.columns]
    if not cols or missing:
        raise KeyError(f"metrics {missing or 'none'} not in the table; it has {list(table.columns)}")
    labels = table[label_column].astype(str).tolist() if label_column in table.columns else \
        [str(i) for i in table.index]
    plt = viz.pyplot()
    ncols = min(cfg.bar_columns, len(cols))
    nrows = math.ceil(len(cols) / ncols)
    panel = max(cfg.panel_width / 2, cfg.bar_width_per_run * len(labels))
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel * ncols, cfg.panel_height * nrows), dpi=cfg.dpi,
                             squeeze=False)
    for ax in axes.flat[len(cols):]:
        ax.set_visible(False)
    positions = np.arange(len(labels))
    for ax, col in zip(axes.flat, cols):
        values = pd.to_numeric(table[col], errors="coerce").to_numpy(dtype=float)
        ax.bar(positions, np.nan_to_num(values, nan=0.0), color=[f"C{i % 10}" for i in range(len(labels))])
        ax.set_xticks(positions, labels, rotation=cfg.label_rotation, ha="right", fontsize=7)
        ax.set_title(col.removeprefix(METRIC_PREFIX), fontsize=9)
    fig.tight_layout()
    return figure_to_image(fig)


def write_report(df: pd.DataFrame, out_dir: str | Path, metrics: Sequence[str] | None = None,
                 curves: Curves | None = None, cfg: ReportConfig | None = None) -> dict[str, Path]:
    """Everything a comparison needs in one folder (table.md, table.csv, PNGs), for logging as artifacts."""
    cfg = cfg or ReportConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_table(df, metrics, cfg)
    paths = {"csv": write_csv(table, out / "comparison.csv"), "markdown": out / "comparison.md"}
    paths["markdown"].write_text(to_markdown(table, cfg))
    if any(c.startswith(METRIC_PREFIX) for c in table.columns):
        paths["bars"] = out / "metric_bars.png"
        metric_bars(table, cfg=cfg).save(paths["bars"])
    if curves:
        paths["curves"] = out / "curves.png"
        overlay_curves(curves, cfg=cfg).save(paths["curves"])
    return paths
