"""`difflab report`: write a run's write-up page (or two runs side by side); needs only the MLflow store."""

from __future__ import annotations

import argparse
from pathlib import Path

from difflab.cli.failures import error, one_line, user_error_types
from difflab.cli.repo import ensure_repo_on_path


def report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="difflab report", description="Write the write-up page (one self-contained "
                                "HTML file) of a pipeline, part_b or part_a run; two runs go side by side.")
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="MLflow run ids (default: the newest finished "
                   "pipeline run of the experiment)")
    p.add_argument("-o", "--output", help="the HTML file to write (default: outputs/report/report-<run>.html)")
    p.add_argument("--experiment", default="difflab", help="where to look for the newest pipeline run")
    p.add_argument("--tracking-uri", help="an MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                   "sqlite:///mlflow.db)")
    return p


def report_main(argv: list[str]) -> int:
    """`difflab report`: no Prefect needed, only the MLflow store."""
    args = report_parser().parse_args(argv)
    from difflab import tracking
    from difflab.config import TrackingConfig

    ensure_repo_on_path()
    from tasks.page import write_report

    cfg = TrackingConfig(experiment=args.experiment, tracking_uri=args.tracking_uri)
    uri = tracking.tracking_uri(cfg)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return error(f"no MLflow store at {uri}; run this where `difflab pipeline` ran, or pass --tracking-uri "
                     "(or set MLFLOW_TRACKING_URI)")
    tracking.configure(cfg)  # only now: configuring a sqlite store creates it
    try:
        path = write_report(args.run_ids, args.output, args.experiment)
    except user_error_types() as exc:
        return error(one_line(exc))
    print(f"report: {path.resolve()}")
    return 0
