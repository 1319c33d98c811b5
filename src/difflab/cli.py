"""The `difflab` command: run any flow with a profile and KEY=VALUE overrides.

    difflab part-b --profile quick --set class_ddpm.epochs=3
    difflab pipeline                     # Part B, then Part A on the model it trained
    difflab compare --experiment difflab

Errors the user can fix are printed as one line with the fix, exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from difflab.config import deep_merge, parse_overrides

# subcommand -> (flow "module:function", config "module:Class", help)
FLOWS: dict[str, tuple[str, str, str]] = {
    "part-b": ("flows.part_b:part_b", "difflab.config:PartBConfig", "train, sample and log all of Part B"),
    "train-denoiser": ("flows.part_b:train_denoiser_flow", "difflab.config:PartBConfig", "the single-step denoiser"),
    "train-time-ddpm": ("flows.part_b:train_time_ddpm_flow", "difflab.config:PartBConfig", "the time-conditioned DDPM"),
    "train-class-ddpm": ("flows.part_b:train_class_ddpm_flow", "difflab.config:PartBConfig",
                         "the class-conditioned DDPM"),
    "part-a": ("flows.part_a:part_a", "difflab.config:PartAConfig", "Part A sampling and edits"),
    "pipeline": ("flows.pipeline:pipeline", "difflab.config:PipelineConfig", "Part B, then Part A on its model"),
    "compare": ("flows.compare:compare", "difflab.config:CompareConfig", "compare runs side by side"),
    "sweep": ("flows.sweep:sweep", "flows.sweep:SweepConfig", "fan out deployment runs over a grid"),
}


def _load(ref: str):
    module, name = ref.split(":")
    _ensure_repo_on_path()
    return getattr(importlib.import_module(module), name)


def _ensure_repo_on_path() -> None:
    """flows/ and tasks/ live at the repository root, beside src/."""
    root = Path(__file__).resolve().parents[2]
    if (root / "flows").is_dir() and str(root) not in sys.path:
        sys.path.insert(0, str(root))


def _read_config_file(path: str) -> dict:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"config file {path} not found; give a JSON or YAML file of config values")
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text) or {}
    return json.loads(text)


def build_config(config_ref: str, args: argparse.Namespace):
    raw: dict = {}
    if args.config:
        raw = _read_config_file(args.config)
    overrides = parse_overrides(args.set or [])
    if getattr(args, "profile", None):
        overrides["profile"] = args.profile
    for flag in ("force", "device"):
        value = getattr(args, flag, None)
        if value:
            overrides[flag] = value
    return _load(config_ref).model_validate(deep_merge(raw, overrides))


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", help="named profile: auto (default), course, quick or tiny")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config value, e.g. --set class_ddpm.epochs=3 (repeatable)")
    p.add_argument("--config", help="a JSON or YAML file of config values (overrides apply on top)")
    p.add_argument("--force", action="store_true", default=None, help="retrain stages even if unchanged")
    p.add_argument("--device", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="difflab", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, (_, _, help_text) in FLOWS.items():
        _add_common(sub.add_parser(name, help=help_text))
    sub.add_parser("stack", help="start/stop the local Prefect + MLflow stack (difflab stack --help)")
    sub.add_parser("report", help="write a run's write-up page, or two runs side by side (difflab report --help)")
    return p


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

    _ensure_repo_on_path()
    from tasks.report import write_report

    uri = tracking.configure(TrackingConfig(experiment=args.experiment, tracking_uri=args.tracking_uri))
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        print(f"difflab: error: no MLflow store at {uri}; run this where `difflab pipeline` ran, or pass "
              "--tracking-uri (or set MLFLOW_TRACKING_URI)", file=sys.stderr)
        return 2
    try:
        path = write_report(args.run_ids, args.output, args.experiment)
    except _user_error_types() as exc:
        print(f"difflab: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(f"report: {path.resolve()}")
    return 0


def _user_error_types() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from difflab.data import DataSourceError

    types: list[type[BaseException]] = [FileNotFoundError, ValueError, DataSourceError, ValidationError]
    try:
        from difflab.edits.backend import BackendUnavailable

        types.append(BackendUnavailable)
    except ImportError:
        pass
    return tuple(types)


def _one_line(exc: BaseException) -> str:
    """The first line of the message (pydantic's: its first error in full)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return " ".join(lines[:3]) if type(exc).__name__ == "ValidationError" else lines[0]


def main(argv: list[str] | None = None) -> int:
    from difflab.tracking import quiet_environment

    quiet_environment()
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "stack":  # its own parser, help included
        from difflab.stack import main as stack_main

        return stack_main(argv[1:])
    if argv and argv[0] == "report":
        return report_main(argv[1:])
    args = parser().parse_args(argv)
    flow_ref, config_ref, _ = FLOWS[args.command]
    try:
        config = build_config(config_ref, args)
    except _user_error_types() as exc:
        print(f"difflab: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(config.model_dump(mode="json"), indent=2))
        return 0
    flow = _load(flow_ref)
    state = flow(config=config, return_state=True)
    if state.is_completed():
        result = state.result()
        run_id = result.get("run_id") if isinstance(result, dict) else None
        if run_id:
            from difflab import tracking

            tracking.configure(getattr(config, "tracking", None))
            print(f"MLflow run {run_id}: {tracking.run_url(run_id)}\n{tracking.ui_hint()}")
            if result.get("report"):
                print(f"report: {result['report']} (also in the MLflow run: Artifacts -> "
                      f"{tracking.REPORT_ARTIFACT})")
        return 0
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, BaseException):
        print(f"difflab: error: {_one_line(exc)}", file=sys.stderr)
    else:
        print(f"difflab: {args.command} ended {state.type.value}: {state.message}", file=sys.stderr)
    return 2 if isinstance(exc, _user_error_types()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
