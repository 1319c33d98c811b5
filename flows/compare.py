"""Compare runs side by side: a table (CSV and Markdown) of the params that differ and the metrics,
overlaid loss curves and metric bars, logged to a `compare` run and published as a Prefect table."""

from __future__ import annotations


from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

import flows  # noqa: F401 - the run-start doctor hook, also when Prefect loads this file by path
from difflab import compare as comparison, names, tracking
from difflab.config import CompareConfig
from tasks.retry import retry_if_transient


def _stage_curves(run_id: str, keys: list[str]) -> dict[str, list[tuple[float, float]]]:
    """Each nested stage run's per-step curves, keyed `<stage>/<metric>`."""
    curves = {}
    for child in tracking.child_runs(run_id):
        stage = child.data.tags.get(names.STAGE_TAG, child.info.run_name)
        for key in keys:
            history = tracking.metric_history(child.info.run_id, key)
            if len(history) > 1:
                curves[f"{stage}/{key}"] = history
    return curves


@task(name="gather-runs", retries=2, retry_delay_seconds=3,
      retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def gather(config: CompareConfig):
    tracking.configure(config.tracking)
    if config.run_ids:
        df = tracking.search_runs(run_ids=config.run_ids)
    else:
        df = tracking.search_runs([config.experiment], config.filter)
        df, failed = comparison.drop_failed(df)  # partial numbers of a failed or killed run mislead
        if failed:
            get_run_logger().info("skipping %d FAILED/KILLED runs: %s", len(failed), ", ".join(failed))
    if df.empty:
        raise ValueError(f"no finished runs match experiment {config.experiment!r} and filter {config.filter!r}; "
                         "run a flow first or change --set filter=... / --set run_ids=[...]")
    return df.sort_values("start_time", ascending=False).head(config.max_runs).reset_index(drop=True)


@flow(name="compare", log_prints=True)
def compare(config: CompareConfig | None = None) -> dict:
    config = config or CompareConfig()
    tracking.configure(config.tracking)
    df = gather(config)
    labels = [f"{r.get('tags.mlflow.runName', '')} {r['run_id'][:8]}" for _, r in df.iterrows()]
    curves = {label: _stage_curves(r["run_id"], config.curves) for label, (_, r) in zip(labels, df.iterrows())}
    table = comparison.comparison_table(df, config.metrics)
    paths = comparison.write_report(df, config.output_dir, config.metrics, {k: v for k, v in curves.items() if v})
    markdown = paths["markdown"].read_text()
    with tracking.run("compare", config.tracking.experiment,
                      tags={"flow": "compare", "compared_runs": ",".join(df["run_id"])}) as run_id:
        tracking.log_params({"num_runs": len(df), "filter": config.filter, "run_ids": ",".join(df["run_id"])})
        for path in paths.values():
            tracking.log_file(path, "report")
    records = [{k: (None if v != v else v) for k, v in row.items()} for row in table.to_dict(orient="records")]
    create_table_artifact(records, key="difflab-compare", description=f"{len(df)} runs compared (MLflow run {run_id})")
    create_markdown_artifact(markdown, key="difflab-compare-markdown", description="comparison table")
    get_run_logger().info("compared %d runs: MLflow run %s, files in %s\n%s", len(df), run_id, config.output_dir,
                          markdown)
    return {"run_id": run_id, "runs": list(df["run_id"]), "files": {k: str(v) for k, v in paths.items()},
            "table": records}


if __name__ == "__main__":
    from flows.script import run_command

    raise SystemExit(run_command("compare"))
