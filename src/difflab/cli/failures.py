"""How a `difflab` command ends when it does not succeed: one line on stderr naming the problem and the fix,
and the exit status (2: bad input the user can fix; 1: anything else; 130: Ctrl-C)."""

from __future__ import annotations

import sys
from pathlib import Path

from difflab.cli.prefect_server import stop_prefect_server

USER_ERROR = 2
"""Exit status for bad input: the one line says what to change."""
FAILED = 1
"""Exit status for any other failure."""
INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT), as shells report it."""


def error(message: str) -> int:
    """Print `difflab: error: <message>` and return the user-error exit status."""
    print(f"difflab: error: {message}", file=sys.stderr)
    return USER_ERROR


def user_error_types() -> tuple[type[BaseException], ...]:
    from difflab.errors import user_error_types as types

    return types()


def one_line(exc: BaseException) -> str:
    """The first line of the message; for a config that does not validate (pydantic's ValidationError), its
    first error as `key: what is wrong`, with the fix for an unknown key (the nearest known one, and
    --print-config for them all)."""
    if type(exc).__name__ == "ValidationError" and hasattr(exc, "errors"):
        return _config_error(exc)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _config_error(exc) -> str:
    first = exc.errors(include_url=False)[0]
    key = ".".join(str(part) for part in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    if first["type"] != "extra_forbidden":
        return f"{exc.title}: {key}: {msg}{more}" if key else f"{exc.title}: {msg}{more}"
    import difflib

    siblings = _known_keys(exc.title, first["loc"][:-1])
    near = difflib.get_close_matches(str(first["loc"][-1]), siblings, n=1)
    hint = f"did you mean {'.'.join([*map(str, first['loc'][:-1]), near[0]])}? " if near else ""
    return f"{exc.title}: {key}: no such setting; {hint}--print-config lists every key{more}"


def _known_keys(title: str, parent: tuple) -> list[str]:
    """The field names a config class (by its title) has at `parent` (a path of field names)."""
    import difflab.config as config

    cls = getattr(config, title, None)
    for part in parent:
        field = getattr(cls, "model_fields", {}).get(str(part))
        cls = getattr(field, "annotation", None) if field else None
    return list(getattr(cls, "model_fields", {}) or [])


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def disk_full_line(exc: BaseException) -> str | None:
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


def interrupted(command: str, tracking_cfg) -> int:
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
    stop_prefect_server()
    print(f"difflab: {line}", file=sys.stderr)
    return INTERRUPTED


def flow_failed(command: str, state, tracking_cfg) -> int:
    """The one line and exit status for a flow run that did not complete: a full disk or a locked store (2),
    a lost tracking server (1, resume by rerunning), a user error (2), anything else (1)."""
    from difflab import tracking

    exc = state.result(raise_on_failure=False)
    disk_full = disk_full_line(exc) if isinstance(exc, BaseException) else None
    if disk_full:
        return error(disk_full)
    if isinstance(exc, BaseException) and tracking.is_locked_store(exc):
        uri = tracking.tracking_uri(tracking_cfg)
        where = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else uri
        return error(f"{tracking.locked_store_line(where)}; what finished before is recorded")
    if isinstance(exc, BaseException) and tracking.is_unreachable(exc):
        print(f"difflab: error: lost the MLflow tracking server {tracking.tracking_uri(tracking_cfg)} mid-run; "
              "the local checkpoints under .difflab/checkpoints are kept: start the server again and rerun the "
              "same command to resume from the last finished epoch", file=sys.stderr)
        return FAILED
    if isinstance(exc, BaseException):
        print(f"difflab: error: {one_line(exc)}", file=sys.stderr)
    else:
        print(f"difflab: {command} ended {state.type.value}: {state.message}", file=sys.stderr)
    from difflab.errors import is_user_error

    return USER_ERROR if isinstance(exc, BaseException) and is_user_error(exc) else FAILED
