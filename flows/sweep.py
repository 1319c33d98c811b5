"""Sweep: fan a grid of runs out to the work pool, wait for them all, compare them.

Each grid point becomes one run of a deployment (by default `part_b/tiny`, whose
parameters the sweep replaces), created with `run_deployment(..., timeout=0)`, so
the runs queue on the work pool at once and every worker polling it (one
machine or many) takes some: they execute in parallel. Each logs to the MLflow
server named by its worker's MLFLOW_TRACKING_URI.

In MLflow the sweep is one run (`sweep-<id>`) with every grid point's run nested
under it and tagged `difflab.sweep=<id>`: filter on that tag in the MLflow UI,
select the runs and press Compare to see them side by side. The sweep then hands
the runs to the compare flow (its report run is tagged on the sweep's run as
`difflab.compare_run_id`) and publishes its own table as a Prefect table artifact
(key `sweep-results`).

    prefect deployment run sweep/guidance-seed-width \
        --params '{"config": {"base": {"profile": "tiny"}, "grid": {"seed": [0, 1, 2]}}}'

Grid keys are dotted paths into the deployment's `config` parameter
(`class_ddpm.guidance`, `seed`); a key listing several comma-separated paths sets
them all to the same value (`denoiser.hidden,time_ddpm.hidden,class_ddpm.hidden`
is the width D of all three UNets).
"""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.states import Cancelling
import pandas as pd

import flows  # noqa: F401 - the run-start doctor hook, also when Prefect loads this file by path
from difflab import compare as comparison, tracking
from difflab.config import WIDTH, SweepConfig, deep_merge, nested

def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of the grid as a list of {grid key: value}, in a stable order."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def point_overrides(point: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": 1, "x.y,z.y": 2} -> {"a": {"b": 1}, "x": {"y": 2}, "z": {"y": 2}}."""
    return nested((path.strip(), value) for key, value in point.items() for path in key.split(",") if path.strip())


def point_label(point: dict[str, Any]) -> str:
    def short(key: str) -> str:
        return "D" if key == WIDTH else key.split(",")[0]

    return ",".join(f"{short(k)}={v}" for k, v in point.items())


def _is_part_b(deployment: str) -> bool:
    return deployment.split("/", 1)[0] == "part_b"


def _expected_params(config: dict[str, Any], point: dict[str, Any]) -> dict[str, str]:
    """The MLflow params a part_b run of this config logs for the grid's keys (how a run is recognised)."""
    from difflab.config import PartBConfig, flatten_params

    flat = flatten_params(PartBConfig.model_validate(config))
    return {p.strip(): str(flat[p.strip()]) for key in point for p in key.split(",") if p.strip() in flat}


def _find_mlflow_run(flow_run, experiment: str, parent: str | None, expected: dict[str, str]) -> str | None:
    """The MLflow parent run of a finished deployment run: by the flow's returned run id, by the
    `prefect.flow_run_id` tag, or (part_b nested under the sweep) by its params for the grid's keys."""
    try:
        result = flow_run.state.result(raise_on_failure=False)
        if isinstance(result, dict) and result.get("run_id"):
            return str(result["run_id"])
    except Exception:  # result not persisted or not readable from here (another machine)
        pass
    runs = tracking.search_runs([experiment], f"tags.`prefect.flow_run_id` = '{flow_run.id}'")
    if len(runs):
        return str(runs.iloc[0]["run_id"])
    if parent and expected:
        runs = tracking.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'")
        for _, row in runs.iterrows():
            if all(str(row.get(f"params.{k}")) == v for k, v in expected.items()):
                return str(row["run_id"])
    return None


def _cancel(ids: list, log) -> None:
    """Best effort: move the flow runs that are not final yet to Cancelling."""
    with get_client(sync_client=True) as client:
        for fid in ids:
            try:
                fr = client.read_flow_run(fid)
                if fr.state is None or not fr.state.is_final():
                    client.set_flow_run_state(fid, Cancelling(), force=True)
            except Exception as exc:
                log.warning("could not cancel %s: %s", fid, exc)


def _wait(ids: list, timeout_s: float, poll_s: float, log) -> dict:
    """Poll until every flow run is in a final state or the timeout passes; cancel the rest then."""
    pending, done = set(ids), {}
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while pending:
            for fid in list(pending):
                fr = client.read_flow_run(fid)
                if fr.state is not None and fr.state.is_final():
                    done[fid] = fr
                    pending.discard(fid)
                    log.info("%s finished: %s", fr.name, fr.state.name)
            if not pending:
                break
            if time.monotonic() > deadline:
                log.error("timed out after %.0fs; cancelling %d unfinished run(s)", timeout_s, len(pending))
                _cancel(list(pending), log)
                for fid in pending:
                    done[fid] = client.read_flow_run(fid)
                break
            time.sleep(poll_s)
    return done


def _compare_flow(run_ids: list[str], experiment: str, log) -> Any:
    """Hand the runs to the project's compare flow when it exists; the table below is made either way."""
    try:
        from difflab.config import CompareConfig  # type: ignore[attr-defined]
        from flows.compare import compare  # type: ignore[import-not-found]
    except ImportError:
        return None
    fields = CompareConfig.model_fields
    kwargs: dict[str, Any] = {}
    if "run_ids" in fields:
        kwargs["run_ids"] = run_ids
    if "experiment" in fields:
        kwargs["experiment"] = experiment
    try:
        return compare(config=CompareConfig(**kwargs))
    except Exception as exc:  # the sweep's own comparison still stands
        log.warning("compare flow failed: %s", exc)
        return None


@flow(name="sweep", log_prints=True)
def sweep(config: SweepConfig | None = None) -> dict:
    """Run a deployment once per grid point in parallel on the work pool's workers, then compare the runs."""
    config = config or SweepConfig()
    log = get_run_logger()
    points = expand_grid(config.grid)
    if len(points) > config.max_runs:
        raise ValueError(f"the grid has {len(points)} points, more than max_runs={config.max_runs}")
    configs = [deep_merge(config.base, point_overrides(p)) for p in points]
    part_b = _is_part_b(config.deployment)
    expected = [_expected_params(c, p) if part_b else {} for c, p in zip(configs, points)]  # validates early

    experiment = (config.base.get("tracking") or {}).get("experiment") or config.tracking.experiment
    tracking.configure(config.tracking)
    sweep_id = uuid.uuid4().hex[:8]
    with get_client(sync_client=True) as client:  # fail before creating anything when the name is wrong
        client.read_deployment_by_name(config.deployment)

    with tracking.run(f"sweep-{sweep_id}", experiment,
                      tags={"flow": "sweep", "difflab.sweep": sweep_id, "deployment": config.deployment}) as sweep_run:
        tracking.log_params({"deployment": config.deployment, "points": len(points),
                             **{f"grid.{k}": v for k, v in config.grid.items()},
                             **{f"base.{k}": v for k, v in config.base.items()}})
        flow_runs = []
        try:
            for i, (point, cfg) in enumerate(zip(points, configs)):
                params: dict[str, Any] = {"config": cfg}
                if config.nest and part_b:
                    params["parent_run_id"] = sweep_run
                fr = run_deployment(
                    name=config.deployment, parameters=params, timeout=0,
                    flow_run_name=f"sweep-{sweep_id}-{i:02d}", tags=["sweep", f"sweep-{sweep_id}"],
                    # persisted results let the sweep read each run's MLflow run id back
                    job_variables={"env": {"PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true"}},
                )
                log.info("queued %s (%s): %s", fr.name, fr.id, point_label(point))
                flow_runs.append(fr)
            finished = _wait([fr.id for fr in flow_runs], config.timeout_s, config.poll_s, log)
        except BaseException:  # the sweep itself failed or was cancelled: take its runs with it
            _cancel([fr.id for fr in flow_runs], log)
            raise

        rows, failed = [], []
        for i, (point, fr) in enumerate(zip(points, flow_runs)):
            fr = finished.get(fr.id, fr)
            state = fr.state.name if fr.state else "unknown"
            row: dict[str, Any] = {"point": i, **{("D" if k == WIDTH else k): v for k, v in point.items()},
                                   "state": state, "flow_run": fr.name}
            run_id = _find_mlflow_run(fr, experiment, sweep_run if config.nest and part_b else None, expected[i])
            row["mlflow_run_id"] = run_id or ""
            if run_id:
                tracking.log_tags({"difflab.sweep": sweep_id, "difflab.sweep_point": point_label(point)}, run_id)
                metrics = tracking.get_run(run_id).data.metrics
                for key in config.metrics or sorted(metrics):
                    row[key] = metrics.get(key)
            if not (fr.state and fr.state.is_completed()):
                failed.append(f"{fr.name} ({point_label(point)}): {state}")
            rows.append(row)

        table = comparison.to_markdown(pd.DataFrame(rows)) if rows else "(no runs)"
        tracking.log_dict({"sweep": sweep_id, "rows": rows}, "sweep/results.json")
        tracking.log_text(table, "sweep/results.md")
        tracking.log_metrics({"points_completed": len(rows) - len(failed), "points_failed": len(failed)})
        create_table_artifact(table=rows, key=config.artifact_key,
                              description=f"Sweep {sweep_id} over {config.deployment}: {len(rows)} runs; "
                                          f"MLflow filter `tags.difflab.sweep = '{sweep_id}'`")
        run_ids = [r["mlflow_run_id"] for r in rows if r["mlflow_run_id"]]
        compared = _compare_flow(run_ids, experiment, log) if run_ids else None
        compare_run = compared.get("run_id") if isinstance(compared, dict) else None
        if compare_run:
            tracking.log_tags({"difflab.compare_run_id": compare_run})
        print(table)
        if failed and config.fail_on_error:
            raise RuntimeError(f"{len(failed)} of {len(rows)} sweep runs did not complete: " + "; ".join(failed))
    return {"sweep_id": sweep_id, "mlflow_run_id": sweep_run, "compare_run_id": compare_run, "rows": rows}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(sweep(SweepConfig.model_validate_json(sys.argv[1]) if len(sys.argv) > 1 else None),
                     indent=2, default=str))
