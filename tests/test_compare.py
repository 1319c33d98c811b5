"""The comparison report keeps what tells runs apart and drops what does not."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from difflab.compare import comparison_table, metric_bars, overlay_curves, to_markdown, write_csv, write_report

MIN_PLOT_SIDE = 200


@pytest.fixture
def runs() -> pd.DataFrame:
    """Two runs shaped like mlflow.search_runs output."""
    return pd.DataFrame({
        "run_id": ["a1b2", "c3d4"],
        "run_name": ["quick", "course"],
        "params.lr": ["0.001", "0.001"],
        "params.epochs": ["5", "20"],
        "params.note": [None, "a|b"],
        "metrics.loss": [0.031, 0.0285],
        "metrics.agreement": [0.8, 0.95],
        "metrics.only_first": [1.5, np.nan],
        "tags.mlflow.runName": ["quick", "course"],
    })


def test_comparison_table_keeps_differing_params_and_drops_identical(runs):
    table = comparison_table(runs)
    assert table["run_name"].tolist() == ["quick", "course"]
    assert table["run_id"].tolist() == ["a1b2", "c3d4"]
    assert "params.epochs" in table and "params.note" in table
    assert "params.lr" not in table
    assert table["params.epochs"].tolist() == ["5", "20"]
    assert {"metrics.loss", "metrics.agreement", "metrics.only_first"} <= set(table.columns)
    assert not any(c.startswith("tags.") for c in table.columns)


def test_comparison_table_selects_metrics_with_or_without_prefix(runs):
    table = comparison_table(runs, metrics=["loss", "metrics.agreement"])
    assert [c for c in table.columns if c.startswith("metrics.")] == ["metrics.loss", "metrics.agreement"]
    assert table["metrics.loss"].tolist() == [0.031, 0.0285]
    with pytest.raises(KeyError, match="available"):
        comparison_table(runs, metrics=["fid"])


def test_comparison_table_names_runs_from_the_mlflow_tag(runs):
    table = comparison_table(runs.drop(columns=["run_name"]))
    assert table["run_name"].tolist() == ["quick", "course"]


def test_comparison_table_rejects_no_runs(runs):
    with pytest.raises(ValueError, match="no runs"):
        comparison_table(runs.iloc[:0])


def test_markdown_has_a_header_rule_and_one_row_per_run(runs):
    table = comparison_table(runs, metrics=["loss", "only_first"])
    lines = to_markdown(table).strip().splitlines()
    assert len(lines) == 2 + len(runs)
    header = [c.strip() for c in lines[0].strip("|").split(" | ")]
    assert header == list(table.columns)
    assert lines[1].count("|") == len(table.columns) + 1
    assert lines[1].split("|")[-2] == "---:"  # numbers right-aligned
    assert lines[2].startswith("| quick | a1b2 |") and "0.031" in lines[2]
    assert lines[3].startswith("| course | c3d4 |") and "0.0285" in lines[3]
    assert "a\\|b" in lines[3]  # a pipe inside a cell does not split it
    assert lines[3].rstrip().endswith("|  |")  # a missing metric is an empty cell, not "nan"


def test_csv_round_trips(runs, tmp_path):
    table = comparison_table(runs)
    path = write_csv(table, tmp_path / "out" / "table.csv")
    back = pd.read_csv(path, dtype={"params.epochs": str})
    assert back["run_id"].tolist() == ["a1b2", "c3d4"]
    assert back["metrics.loss"].tolist() == [0.031, 0.0285]
    assert math.isnan(back["metrics.only_first"][1])


def _is_nontrivial_plot(img: Image.Image) -> bool:
    arr = np.asarray(img.convert("L"))
    return min(img.size) >= MIN_PLOT_SIDE and arr.std() > 1  # something drawn, not a blank canvas


def test_overlay_curves_draws_a_panel_per_key():
    curves = {
        "quick": {"loss": [(0, 1.0), (1, 0.5), (2, 0.2)]},
        "course": {"loss": [(0, 1.2), (1, 0.4)], "lr": [(0, 1e-3), (1, 5e-4)]},
    }
    one = overlay_curves({"quick": curves["quick"]})
    two = overlay_curves(curves)
    assert _is_nontrivial_plot(one) and _is_nontrivial_plot(two)
    assert two.height > one.height  # a second metric key adds a panel
    with pytest.raises(ValueError, match="no curves"):
        overlay_curves({})


def test_metric_bars_draws_each_metric(runs):
    table = comparison_table(runs)
    img = metric_bars(table, ["loss", "agreement"])
    assert _is_nontrivial_plot(img)
    with pytest.raises(KeyError):
        metric_bars(table, ["fid"])


def test_write_report_writes_every_artifact(runs, tmp_path):
    paths = write_report(runs, tmp_path, metrics=["loss"], curves={"quick": {"loss": [(0, 1.0), (1, 0.5)]}})
    assert set(paths) == {"csv", "markdown", "bars", "curves"}
    assert all(p.exists() and p.stat().st_size > 0 for p in paths.values())
    assert paths["markdown"].read_text().count("\n") == 2 + len(runs)


def _same_named_runs(n_metrics: int = 9) -> pd.DataFrame:
    """Three part_b-tiny runs (same name, as a sweep's are) and metrics of every stage, MLflow's alphabetical order."""
    stages = ["class_ddpm", "denoiser", "eval", "time_ddpm"]
    metrics = {f"metrics.{stages[i % 4]}.m{i}": [0.1 * (i + 1), 0.2, 0.3] for i in range(n_metrics)}
    return pd.DataFrame({"run_id": ["aaaaaaaa11", "bbbbbbbb22", "cccccccc33"],
                         "tags.mlflow.runName": ["part_b-tiny"] * 3,
                         "status": ["FINISHED", "FAILED", "FINISHED"], **dict(sorted(metrics.items()))})


def test_same_named_runs_get_distinct_labels_and_metrics_follow_the_stages():
    table = comparison_table(_same_named_runs())
    assert table["run_name"].tolist() == ["part_b-tiny (aaaaaaaa)", "part_b-tiny (bbbbbbbb)", "part_b-tiny (cccccccc)"]
    stages = [c.split(".")[1] for c in table.columns if c.startswith("metrics.")]
    assert stages == sorted(stages, key=["denoiser", "time_ddpm", "class_ddpm", "eval"].index)
    assert "denoiser.m1" in to_markdown(table).splitlines()[0].split("|")[3]


def test_metric_bars_are_a_grid_not_one_row():
    from difflab.compare import ReportConfig

    cfg = ReportConfig(bar_columns=4)
    image = metric_bars(comparison_table(_same_named_runs(9)), cfg=cfg)
    rows = math.ceil(9 / 4)
    assert image.height >= rows * cfg.panel_height * cfg.dpi * 0.95
    assert image.width <= 4 * max(cfg.panel_width / 2, cfg.bar_width_per_run * 3) * cfg.dpi * 1.05


def test_failed_runs_are_dropped_from_a_comparison():
    from difflab.compare import drop_failed

    kept, dropped = drop_failed(_same_named_runs())
    assert dropped == ["bbbbbbbb22"] and kept["run_id"].tolist() == ["aaaaaaaa11", "cccccccc33"]
