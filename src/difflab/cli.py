"""The `difflab` command: run any flow with a profile and KEY=VALUE overrides.

    difflab part-b --profile quick --set class_ddpm.epochs=3
    difflab pipeline                     # Part B, then Part A on the model it trained
    difflab compare --experiment difflab
    difflab generate --model models:/difflab-class-ddpm@champion --digits 0123456789 -n 4 -o digits.png

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
    "sweep": ("flows.sweep:sweep", "difflab.config:SweepConfig", "fan out deployment runs over a grid"),
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
    sub.add_parser("runs", help="run housekeeping: `difflab runs doctor` ends runs whose process died")
    sub.add_parser("report", help="write a run's write-up page, or two runs side by side (difflab report --help)")
    sub.add_parser("generate", help="draw digits from a registered DDPM into a PNG grid (difflab generate --help)")
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
    from tasks.page import write_report

    cfg = TrackingConfig(experiment=args.experiment, tracking_uri=args.tracking_uri)
    uri = tracking.tracking_uri(cfg)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        print(f"difflab: error: no MLflow store at {uri}; run this where `difflab pipeline` ran, or pass "
              "--tracking-uri (or set MLFLOW_TRACKING_URI)", file=sys.stderr)
        return 2
    tracking.configure(cfg)  # only now: configuring a sqlite store creates it
    try:
        path = write_report(args.run_ids, args.output, args.experiment)
    except _user_error_types() as exc:
        print(f"difflab: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(f"report: {path.resolve()}")
    return 0


GENERATE_MODEL = "models:/difflab-class-ddpm@champion"


def generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="difflab generate", description="Draw digits from a registered DDPM through "
                                "its MLflow pyfunc model (what `mlflow models serve` runs) and write them as a grid: "
                                "one row per digit, n columns.")
    p.add_argument("--model", default=GENERATE_MODEL, help=f"a model URI (default {GENERATE_MODEL}; also "
                   "models:/<name>/<version>, models:/<name>/latest, models:/<model_id>, runs:/<run>/<name>)")
    p.add_argument("--digits", help="the digits to draw, one grid row each, e.g. 0123456789 (the default for a "
                   "class-conditioned model); leave out for the time-conditioned model")
    p.add_argument("-n", "--count", type=int, default=4, help="images per digit (default 4)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance (default: the trained value)")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0): same seed, same digits")
    p.add_argument("-o", "--output", default="digits.png", help="the PNG grid to write (default digits.png)")
    p.add_argument("--npy", action="store_true", help="also write the images beside it as <output>.npy: float32 "
                   "(rows, n, 28, 28) in [0, 1]")
    p.add_argument("--tracking-uri", help="an MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                   "sqlite:///mlflow.db)")
    return p


def generate_main(argv: list[str]) -> int:
    """`difflab generate`: no Prefect, only the MLflow registry and the model's own pyfunc."""
    args = generate_parser().parse_args(argv)
    from difflab import tracking
    from difflab.config import TrackingConfig

    def fail(message: str) -> int:
        print(f"difflab: error: {message}", file=sys.stderr)
        return 2

    cfg = TrackingConfig(tracking_uri=args.tracking_uri)
    uri = tracking.tracking_uri(cfg)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return fail(f"no MLflow store at {uri}; run this where `difflab part-b` ran, or pass --tracking-uri "
                    "(or set MLFLOW_TRACKING_URI)")
    try:
        tracking.probe(cfg)
        tracking.configure(cfg)
        model = tracking.load_pyfunc(args.model)
    except (tracking.ModelNotFound, tracking.TrackingUnreachable) as exc:
        return fail(str(exc))
    meta = (model.metadata.metadata or {}).get(tracking.MODEL_METADATA_KEY)
    if not meta or meta.get("kind") != "generator":
        what = "the single-step denoiser (it cleans noisy digits)" if meta else "not a difflab DDPM"
        return fail(f"{args.model} is {what}; give a DDPM, e.g. --model {GENERATE_MODEL} or "
                    "models:/difflab-time-ddpm/latest")
    if args.digits is not None and not meta["conditional"]:
        return fail(f"{args.model} is the time-conditioned DDPM: it draws unconditional digits; leave out --digits "
                    f"(or give a class-conditioned model, e.g. {GENERATE_MODEL})")
    digits = (args.digits or "0123456789") if meta["conditional"] else None
    if digits is not None and (not digits.isdigit() or not digits.isascii()):
        return fail(f"--digits {digits!r}: give the digits to draw as one string of 0-9, e.g. --digits 0123456789")
    from difflab.generator import UNCONDITIONAL

    rows = [{"digit": int(d), "count": args.count, "seed": args.seed} for d in digits] if digits else \
        [{"digit": UNCONDITIONAL, "count": args.count, "seed": args.seed}]
    if args.guidance is not None:
        if not meta["conditional"]:
            return fail("--guidance: the time-conditioned model has no classifier-free guidance; leave it out")
        rows = [{**r, "guidance": args.guidance} for r in rows]
    import numpy as np
    import pandas as pd

    try:
        answer = model.predict(pd.DataFrame(rows))
    except Exception as exc:  # noqa: BLE001 - MLflow's schema check or the model's InvalidRequest: one line
        return fail(f"{args.model}: {_one_line(exc).removeprefix('Failed to enforce schema of data ')}")
    images = np.stack(answer["image"].to_list()).astype(np.float32).reshape(len(rows), args.count, 28, 28)
    import torch

    from difflab import viz

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    viz.grid(torch.from_numpy(images).reshape(-1, 1, 28, 28), nrow=args.count, scale=2).save(out)
    print(f"wrote {out} ({len(rows)} x {args.count} digits from {args.model}, seed {args.seed})")
    if args.npy:
        np.save(out.with_suffix(".npy"), images)
        print(f"wrote {out.with_suffix('.npy')} (float32 {tuple(images.shape)} in [0, 1])")
    return 0


def _user_error_types() -> tuple[type[BaseException], ...]:
    from difflab.errors import user_error_types

    return user_error_types()


def _one_line(exc: BaseException) -> str:
    """The first line of the message (pydantic's: its first error in full)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return " ".join(lines[:3]) if type(exc).__name__ == "ValidationError" else lines[0]


def _start_prefect_once() -> None:
    """Start Prefect's temporary server now, one process at a time: runs started together in one folder
    otherwise start theirs at once, and one times out."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    from difflab.locks import file_lock

    from difflab.procs import children_die_with_parent

    global _OWN_SERVER
    with file_lock(Path(PREFECT_HOME.value()) / "difflab-server-start.lock"), children_die_with_parent():
        _OWN_SERVER = SubprocessASGIServer()
        _OWN_SERVER.start()  # dies with this process, even on SIGKILL (atexit alone would not run)


_OWN_SERVER = None
"""The temporary Prefect server this CLI started (never one a caller, such as a test harness, runs)."""


def _stop_prefect_server() -> None:
    """Stop this process's temporary Prefect server now rather than at exit, so that difflab's own last line
    (the run's link, or the one-line error) is the last thing printed, not "Stopping temporary server"."""
    import contextlib
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.utilities.asyncutils import run_coro_as_sync

    servers = [s for s in SubprocessASGIServer._instances.values() if s is _OWN_SERVER and s.server_process]
    if not servers:
        return

    async def drain() -> None:  # as prefect_test_harness does: logs and events still queued reach the server
        for pending in (lambda: APILogWorker.instance().drain(), EventsWorker.drain_all):
            with contextlib.suppress(Exception):
                result = pending()
                if inspect.isawaitable(result):
                    await result

    with contextlib.suppress(Exception):
        run_coro_as_sync(drain())
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


class _UserErrorTraceback:
    """A logging filter: a record about a user error (difflab.errors.is_user_error) keeps its message (which
    is the one line naming the problem and the fix) but loses the traceback Prefect attaches to it."""

    def filter(self, record) -> bool:
        from difflab.errors import is_user_error

        if record.exc_info and is_user_error(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_user_error_tracebacks() -> None:
    """Prefect logs a failed task's and flow's traceback; for a user error the one line is the whole story."""
    import logging

    for name in ("prefect", "prefect.task_runs", "prefect.flow_runs", ""):
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if not any(isinstance(f, _UserErrorTraceback) for f in handler.filters):
                handler.addFilter(_UserErrorTraceback())


class PrefectUnreachable(RuntimeError):
    """PREFECT_API_URL names a Prefect server that does not answer; the message names it and the fix."""


def probe_prefect(timeout_s: float) -> None:
    """Stop at once, in one line, when PREFECT_API_URL is set and its /health does not answer (like the
    MLflow probe, tracking.probe): otherwise the first flow call prints three chained tracebacks."""
    import urllib.error
    import urllib.request

    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return
    fix = ("start it (difflab stack up, or prefect server start), or unset PREFECT_API_URL (and `prefect config "
           "unset PREFECT_API_URL`) to run on a temporary local server")
    try:
        urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return  # a server behind authentication (Prefect Cloud): it answered
        raise PrefectUnreachable(f"Prefect API PREFECT_API_URL={url} answered HTTP {exc.code} at /health: not a "
                                 f"Prefect API; {fix}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PrefectUnreachable(f"Prefect API PREFECT_API_URL={url} is not reachable ({reason}); {fix}") from None


def _tracking_config(config):
    """The tracking section of any flow's config (the pipeline's is part_b's)."""
    return getattr(config, "tracking", None) or getattr(getattr(config, "part_b", None), "tracking", None)


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _disk_full_line(exc: BaseException) -> str | None:
    """One line for a full disk, naming where, whichever layer (torch, SQLite, MLflow) noticed it first."""
    from difflab.files import DiskFullError, is_disk_full

    if not is_disk_full(exc):
        return None
    for e in _chain(exc):
        if isinstance(e, DiskFullError):
            return str(e)
    for e in _chain(exc):
        if isinstance(e, OSError) and e.filename:
            return f"disk full: no space left to write {e.filename}; free some space and rerun " \
                   "(training resumes from its last checkpoint)"
    from difflab import tracking

    return f"disk full: the MLflow store {tracking.tracking_uri()} (in {Path.cwd()}) could not be written; " \
           "free some space and rerun (training resumes from its last checkpoint)"


INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT), as shells report it."""


def _interrupted(command: str, tracking_cfg) -> int:
    """Ctrl-C: one line naming where training stopped, this process's runs ended KILLED in MLflow and
    CANCELLED in Prefect; the last epoch checkpoint stays, so the same command resumes from it."""
    import signal

    from tasks.progress import EpochProgress

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the bookkeeping short
    last = EpochProgress.last
    if last is not None and last[1] < last[2]:
        where = f"{last[0]} epoch {last[1] + 1}/{last[2]}"
        line = f"interrupted at {where}; rerun the same command to resume from it"
    else:
        where = command
        line = f"interrupted during {command}; rerun the same command to resume (finished stages are reused)"
    try:
        from difflab import tracking

        tracking.configure(tracking_cfg)
        tracking.end_interrupted_runs(f"interrupted (Ctrl-C) at {where}")
    except Exception:  # noqa: BLE001 - the one line matters more than the bookkeeping
        pass
    _stop_prefect_server()
    print(f"difflab: {line}", file=sys.stderr)
    return INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("stack", "runs"):
        _ensure_repo_on_path()  # ops/ lives at the repository root, beside src/
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
    except _user_error_types() as exc:
        print(f"difflab: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(config.model_dump(mode="json"), indent=2))
        return 0
    from difflab import tracking

    tracking_cfg = _tracking_config(config)
    try:
        tracking.probe(tracking_cfg)
        probe_prefect(tracking_cfg.probe_timeout_s)
    except (tracking.TrackingUnreachable, tracking.StoreLocked, PrefectUnreachable) as exc:
        print(f"difflab: error: {exc}", file=sys.stderr)
        return 2
    flow = _load(flow_ref)
    _quiet_user_error_tracebacks()
    try:
        _start_prefect_once()
        state = flow(config=config, return_state=True)
    except KeyboardInterrupt:
        return _interrupted(args.command, tracking_cfg)
    _stop_prefect_server()
    if state.is_completed():
        result = state.result()
        run_id = result.get("run_id") if isinstance(result, dict) else None
        if run_id:
            tracking.configure(tracking_cfg)
            print(f"MLflow run {run_id}: {tracking.run_url(run_id)}\n{tracking.ui_hint()}")
            if result.get("report"):
                print(f"report: {result['report']} (also in the MLflow run: Artifacts -> "
                      f"{tracking.REPORT_ARTIFACT})")
        return 0
    exc = state.result(raise_on_failure=False)
    disk_full = _disk_full_line(exc) if isinstance(exc, BaseException) else None
    if disk_full:
        print(f"difflab: error: {disk_full}", file=sys.stderr)
        return 2
    if isinstance(exc, BaseException) and tracking.is_locked_store(exc):
        uri = tracking.tracking_uri(tracking_cfg)
        where = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else uri
        print(f"difflab: error: {tracking.locked_store_line(where)}; what "
              "finished before is recorded", file=sys.stderr)
        return 2
    if isinstance(exc, BaseException) and tracking.is_unreachable(exc):
        print(f"difflab: error: lost the MLflow tracking server {tracking.tracking_uri(tracking_cfg)} mid-run; "
              "the local checkpoints under .difflab/checkpoints are kept: start the server again and rerun the "
              "same command to resume from the last finished epoch", file=sys.stderr)
        return 1
    if isinstance(exc, BaseException):
        print(f"difflab: error: {_one_line(exc)}", file=sys.stderr)
    else:
        print(f"difflab: {args.command} ended {state.type.value}: {state.message}", file=sys.stderr)
    from difflab.errors import is_user_error

    return 2 if isinstance(exc, BaseException) and is_user_error(exc) else 1


if __name__ == "__main__":
    raise SystemExit(main())
