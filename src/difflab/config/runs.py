"""The configs of the flows that combine others: the pipeline (`make run`), the comparison, the sweep."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from difflab.config.base import Positive, _Strict
from difflab.config.operations import TrackingConfig
from difflab.config.part_a import PartAConfig
from difflab.config.part_b import PartBConfig
from difflab.names import PART_B_STAGES


WIDTH = ",".join(f"{run}.hidden" for run in PART_B_STAGES.values())
"""Grid key for the width D of every Part B UNet at once ("denoiser.hidden,time_ddpm.hidden,class_ddpm.hidden")."""

DEFAULT_METRICS = [f"{run}.final_loss" for run in PART_B_STAGES.values()]


class SweepConfig(_Strict):
    """The sweep flow: a grid of deployment runs, compared when they all finished."""

    deployment: str = "part_b/tiny"
    """`flow/deployment` to run at every grid point; its parameters are replaced by base + the point."""
    base: dict[str, Any] = Field(default_factory=lambda: {"profile": "quick"})
    """The deployment's `config` parameter shared by every point (a PartBConfig for part_b)."""
    grid: dict[str, list[Any]] = Field(default_factory=lambda: {
        "class_ddpm.guidance": [1.0, 3.0, 5.0, 7.0], "seed": [0, 1], WIDTH: [8, 16]})
    """Dotted path(s) -> values; the sweep runs their cartesian product."""
    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    """Metrics of each run's MLflow parent run shown in the comparison (all of them when empty)."""
    max_runs: int = 64
    """Refuse grids larger than this (a typo in a grid should not queue a thousand runs)."""
    timeout_s: float = 12 * 3600
    """Give up waiting after this long; unfinished runs are cancelled."""
    poll_s: float = 3.0
    nest: bool = True
    """Nest every point's MLflow run under the sweep's run (part_b's parent_run_id parameter)."""
    fail_on_error: bool = True
    """Fail the sweep (after comparing what finished) when any point did not complete."""
    artifact_key: str = "sweep-results"
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """Where the sweep's own MLflow run goes; the experiment defaults to base.tracking.experiment."""

    @field_validator("grid")
    @classmethod
    def _non_empty(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid[{key!r}] must be a non-empty list of values")
        return grid


class PipelineConfig(_Strict):
    """`make run`: Part B, then Part A on the class-conditioned model Part B just trained."""

    part_b: PartBConfig = Field(default_factory=PartBConfig)
    part_a: PartAConfig = Field(default_factory=PartAConfig)
    run_part_a: bool = True
    profile: Literal["auto", "course", "quick", "tiny"] | None = None
    """Shorthand for part_b.profile (the CLI's --profile)."""
    force: bool | None = None
    device: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            part_b = dict(data.get("part_b") or {})
            for key in ("profile", "force", "device"):
                if data.get(key) is not None:
                    part_b.setdefault(key, data[key])
            data["part_b"] = part_b
        return data


class CompareConfig(_Strict):
    """Which runs to put side by side; by default the newest Part B flow runs of the experiment."""

    experiment: str = "difflab"
    run_ids: list[str] = Field(default_factory=list)
    """Explicit runs; when given, experiment and filter are ignored."""
    filter: str = "tags.flow = 'part_b'"
    """An MLflow search filter, e.g. \"tags.profile = 'quick'\" or \"params.class_ddpm.guidance = '5.0'\"."""
    max_runs: Positive = 20
    metrics: list[str] | None = None
    """Metric columns; None takes every metric the chosen runs have."""
    curves: list[str] = Field(default_factory=lambda: ["train_loss"])
    """Per-step metrics of each run's stage children, overlaid per stage."""
    output_dir: str = "outputs/compare"
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
