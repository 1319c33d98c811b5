"""The `difflab` command: run any flow with a profile and KEY=VALUE overrides.

    difflab part-b --profile quick --set class_ddpm.epochs=3
    difflab pipeline                     # Part B, then Part A on the model it trained
    difflab compare --experiment difflab
    difflab generate --model models:/difflab-class-ddpm@champion --digits 0123456789 -n 4 -o digits.png

Errors the user can fix are printed as one line with the fix, exit status 2.

This module parses and starts a flow; beside it: `report` and `generate` (the two commands that need no
Prefect), `prefect_server` (the temporary server a flow command starts and stops, the Prefect probe),
`failures` (the one-line error and the exit status), `repo` (finding flows/, tasks/ and ops/).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from difflab import names
from difflab.cli.failures import flow_failed, interrupted, one_line, user_error_types
from difflab.cli.failures import error as _error
from difflab.cli.generate import generate_main
from difflab.cli.prefect_server import (PrefectUnreachable, probe_prefect, quiet_user_error_tracebacks,
                                        start_prefect_once, stop_prefect_server)
from difflab.cli.report import report_main
from difflab.cli.repo import ensure_repo_on_path, load
from difflab.config import deep_merge, parse_overrides

PART_B_CONFIG = "difflab.config:PartBConfig"


def stage_command(stage_name: str) -> str:
    """The command that trains one stage alone: train-denoiser, train-time-ddpm, train-class-ddpm."""
    return names.stage_flow(stage_name).replace("_", "-")


def stage_commands(stages: dict[str, str], titles: dict[str, str]) -> dict[str, tuple[str, str, str]]:
    """One command per Part B stage, in the stages' order: its flow (flows/part_b.py's STAGE_FLOWS), the Part B
    config, its title as help. stages: key -> run name (names.PART_B_STAGES); titles: key -> a few words."""
    return {stage_command(run): (f"flows.part_b:{names.stage_flow(run)}_flow", PART_B_CONFIG, titles[key])
            for key, run in stages.items()}


# subcommand -> (flow "module:function", config "module:Class", help)
FLOWS: dict[str, tuple[str, str, str]] = {
    "part-b": ("flows.part_b:part_b", PART_B_CONFIG, "train, sample and log all of Part B"),
    **stage_commands(names.PART_B_STAGES, names.PART_B_STAGE_TITLES),
    "part-a": ("flows.part_a:part_a", "difflab.config:PartAConfig", "Part A sampling and edits"),
    "pipeline": ("flows.pipeline:pipeline", "difflab.config:PipelineConfig", "Part B, then Part A on its model"),
    "compare": ("flows.compare:compare", "difflab.config:CompareConfig", "compare runs side by side"),
    "sweep": ("flows.sweep:sweep", "difflab.config:SweepConfig", "fan out deployment runs over a grid"),
}


def _read_config_file(path: str) -> dict:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"config file {path} not found; give a JSON or YAML file of config values")
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ValueError(f"config file {path}{where}: invalid YAML ({problem}); fix the syntax there") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config file {path} line {exc.lineno}: invalid JSON ({exc.msg}); fix the syntax there "
                             "(or name the file .yaml to write YAML)") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} holds a {type(data).__name__}, not a mapping of config keys; "
                         "write e.g. `class_ddpm: {epochs: 3}`")
    return data


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
    return load(config_ref).model_validate(deep_merge(raw, overrides))


SET_EXAMPLES = {PART_B_CONFIG: "class_ddpm.epochs=3", "difflab.config:PipelineConfig": "part_b.class_ddpm.epochs=3",
                "difflab.config:PartAConfig": "guidance=5.0", "difflab.config:CompareConfig": "output_dir=cmp"}
"""An override each command's config really takes, for its --help."""


def _add_common(p: argparse.ArgumentParser, config_ref: str) -> None:
    """The options every flow command shares; --profile, --force and --device only where its config has them."""
    fields = load(config_ref).model_fields
    if "profile" in fields:
        p.add_argument("--profile", help="named profile: auto (default), course, quick or tiny")
    example = f", e.g. --set {SET_EXAMPLES[config_ref]}" if config_ref in SET_EXAMPLES else ""
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help=f"override any config value (--print-config shows the keys){example} (repeatable)")
    p.add_argument("--config", help="a JSON or YAML file of config values (overrides apply on top)")
    if "force" in fields:
        p.add_argument("--force", action="store_true", default=None, help="retrain stages even if unchanged")
    if "device" in fields:
        p.add_argument("--device", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="difflab", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, (_, config_ref, help_text) in FLOWS.items():
        _add_common(sub.add_parser(name, help=help_text, description=help_text), config_ref)
    sub.add_parser("stack", help="start/stop the local Prefect + MLflow stack (difflab stack --help)")
    sub.add_parser("runs", help="run housekeeping: `difflab runs doctor` ends runs whose process died")
    sub.add_parser("report", help="write a run's write-up page, or two runs side by side (difflab report --help)")
    sub.add_parser("generate", help="draw digits from a registered DDPM into a PNG grid (difflab generate --help)")
    return p


def _tracking_config(config):
    """The tracking section of any flow's config (the pipeline's is part_b's)."""
    return getattr(config, "tracking", None) or getattr(getattr(config, "part_b", None), "tracking", None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("stack", "runs"):
        ensure_repo_on_path()  # ops/ lives at the repository root, beside src/
    if argv and argv[0] == "stack":  # its own parser, help included
        from ops.stack import main as stack_main

        return stack_main(argv[1:])
    if argv and argv[0] == "runs":  # run housekeeping: `difflab runs doctor`
        from ops.runs import main as runs_main

        return runs_main(argv[1:])
    if argv and argv[0] == "report":
        return report_main(argv[1:])
    if argv and argv[0] == "generate":
        return generate_main(argv[1:])
    args = parser().parse_args(argv)
    flow_ref, config_ref, _ = FLOWS[args.command]
    try:
        config = build_config(config_ref, args)
    except user_error_types() as exc:
        return _error(one_line(exc))
    if args.print_config:
        print(json.dumps(config.model_dump(mode="json"), indent=2))
        return 0
    from difflab import tracking

    tracking_cfg = _tracking_config(config)
    try:
        tracking.probe(tracking_cfg)
        probe_prefect(tracking_cfg.probe_timeout_s)
    except (tracking.TrackingUnreachable, tracking.StoreLocked, PrefectUnreachable) as exc:
        return _error(str(exc))
    flow = load(flow_ref)
    quiet_user_error_tracebacks()
    try:
        start_prefect_once()
        state = flow(config=config, return_state=True)
    except KeyboardInterrupt:
        return interrupted(args.command, tracking_cfg)
    stop_prefect_server()
    if not state.is_completed():
        return flow_failed(args.command, state, tracking_cfg)
    result = state.result()
    run_id = result.get("run_id") if isinstance(result, dict) else None
    if run_id:
        tracking.configure(tracking_cfg)
        print(f"MLflow run {run_id}: {tracking.run_url(run_id)}\n{tracking.ui_hint()}")
        if result.get("report"):
            print(f"report: {result['report']} (also in the MLflow run: Artifacts -> {tracking.REPORT_ARTIFACT})")
    return 0

