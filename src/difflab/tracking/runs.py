"""The run lifecycle: open a run (or reopen one to resume), tag it with its process and Prefect flow run,
end it FAILED or KILLED with the reason when its body raises, and end this process's runs after Ctrl-C.

Ending the runs of processes that died (the run doctor) is operations' job (ops/runs.py); a new top-level
run calls it through the hook `set_run_start_hook`, which the `flows` package registers."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator, Mapping

import mlflow
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from difflab.names import ERROR_TAG, HOST_TAG, PID_START_TAG, PID_TAG, PREFECT_FLOW_RUN_TAG
from difflab.provenance import git_commit
from difflab.tracking.store import _PARAM_MAX, _fail_fast, experiment_id, is_unreachable


@contextlib.contextmanager
def run(name: str, experiment: str, parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None,
        run_id: str | None = None) -> Iterator[str]:
    """Open (or reopen, with run_id) a run in this thread; it ends FAILED if the body raises."""
    if run_id is None:
        all_tags = {**_prefect_tags(), **process_tags(), **{k: str(v) for k, v in (tags or {}).items()}}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        else:  # a new flow run: first close the runs of processes that died (one cheap query)
            _at_run_start(experiment)
        run_id = MlflowClient().create_run(experiment_id(experiment), run_name=name, tags=all_tags).info.run_id
    else:  # reopened (a resume): this process owns it now
        MlflowClient().log_batch(run_id, tags=[RunTag(k, v) for k, v in process_tags().items()])
    active = mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None,
                              log_system_metrics=_system_metrics())
    try:
        yield run_id
    except BaseException as exc:
        dead = is_unreachable(exc)
        stopped = stop_reason(exc)
        with _fail_fast() if dead else contextlib.nullcontext():
            with contextlib.suppress(Exception):
                mlflow.set_tag(ERROR_TAG, (stopped or f"{type(exc).__name__}: {exc}")[:_PARAM_MAX])
            with contextlib.suppress(Exception) if dead else contextlib.nullcontext():
                mlflow.end_run("KILLED" if stopped or isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    else:
        active.__exit__(None, None, None)


@contextlib.contextmanager
def flow_run(flow_name: str, run_name: str, experiment: str, parent_run_id: str | None = None,
             tags: Mapping[str, Any] | None = None) -> Iterator[str]:
    """A flow's own run: tagged with the flow, the code's commit (also as MLflow's Source column) and any
    extra tags; runs nested under parent_run_id when the flow is part of a bigger one."""
    commit = git_commit()
    all_tags = {"flow": flow_name, "git_commit": commit, "mlflow.source.git.commit": commit, **(tags or {})}
    with run(run_name, experiment, parent_run_id, all_tags) as run_id:
        yield run_id


def process_tags() -> dict[str, str]:
    """Host, pid and the pid's start time of this process (a recycled pid has another start time)."""
    from difflab.procs import hostname, proc_start_time

    pid = os.getpid()
    return {HOST_TAG: hostname(), PID_TAG: str(pid), PID_START_TAG: proc_start_time(pid) or ""}


RunStartHook = Callable[[str], None]
"""hook(experiment): called as a new top-level run opens, before it is created."""
_run_start_hook: RunStartHook | None = None


def set_run_start_hook(hook: RunStartHook | None) -> None:
    """What runs as a new top-level run opens: `ops.runs.reap_quietly` (the run doctor: end the runs of
    processes that died, and their Prefect flow runs), registered by the `flows` package, so this library
    never imports ops. Unset (the library used alone), nothing runs."""
    global _run_start_hook
    _run_start_hook = hook


def _at_run_start(experiment: str) -> None:
    """The hook, if any; housekeeping never fails the run that called it."""
    if _run_start_hook is not None:
        with contextlib.suppress(Exception):
            _run_start_hook(experiment)


def end_run(run_id: str, status: str, reason: str) -> None:
    """End a run (FAILED, KILLED) by id with the reason in its difflab.error tag; its artifacts stay."""
    client = MlflowClient()
    client.set_tag(run_id, ERROR_TAG, reason[:_PARAM_MAX])
    client.set_terminated(run_id, status)


def in_flow_run() -> bool:
    """Whether this code runs inside a Prefect flow run (so a Prefect API is at hand)."""
    return bool(_prefect_tags())


def end_interrupted_runs(reason: str) -> list[str]:
    """After Ctrl-C: this process's MLflow runs still RUNNING end KILLED (tracking.run ends those the
    interrupt passed through already), each interrupted run gets `reason` in its difflab.error tag, and
    their Prefect flow runs are set CANCELLED (Prefect's state for a run stopped on purpose) where an API
    answers. Returns the ids of the MLflow runs ended or found KILLED. Artifacts (checkpoints) stay."""
    pid = os.getpid()
    tags = process_tags()
    client = MlflowClient()
    query = (f"tags.`{PID_TAG}` = '{pid}' and tags.`{HOST_TAG}` = '{tags[HOST_TAG]}' and "
             f"tags.`{PID_START_TAG}` = '{tags[PID_START_TAG]}'")
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, query, max_results=1000) if exps else []
    ended, flow_runs = [], {}
    for r in runs:
        if r.info.status == "RUNNING":
            client.set_terminated(r.info.run_id, "KILLED")
        elif r.info.status != "KILLED":
            continue
        client.set_tag(r.info.run_id, ERROR_TAG, reason[:_PARAM_MAX])
        ended.append(r.info.run_id)
        if r.data.tags.get(PREFECT_FLOW_RUN_TAG):
            flow_runs[r.data.tags[PREFECT_FLOW_RUN_TAG]] = reason
    if flow_runs:
        _cancel_prefect_flow_runs(flow_runs)
    return ended


def _cancel_prefect_flow_runs(reasons: Mapping[str, str]) -> None:
    """Set these Prefect flow runs CANCELLED with the reason; quietly nothing when no Prefect API answers."""
    with contextlib.suppress(Exception):
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled

        with get_client(sync_client=True) as client:
            for flow_run_id, reason in reasons.items():
                with contextlib.suppress(Exception):
                    client.set_flow_run_state(flow_run_id, Cancelled(message=f"difflab: {reason}"), force=True)


def _system_metrics() -> bool:
    """MLflow's CPU/memory/disk/network (and, with pynvml, GPU) metrics for every run; needs psutil.
    MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false turns them off."""
    import importlib.util

    if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").lower() in ("false", "0"):
        return False
    import logging

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # not two lines per run in the log
    return importlib.util.find_spec("psutil") is not None


def stop_reason(exc: BaseException) -> str | None:
    """Why a run was stopped from outside, in words, for a signal (Prefect's TerminationSignal: a cancel from the
    Prefect UI or API, or a plain SIGTERM) or Ctrl-C; None for any other error. The run then ends KILLED."""
    import signal as signals

    if isinstance(exc, KeyboardInterrupt):
        return "interrupted: Ctrl-C (SIGINT) in the terminal that ran it; rerun the same command to resume"
    try:
        from prefect.exceptions import TerminationSignal
    except ImportError:  # pragma: no cover - prefect is a dependency
        return None
    if not isinstance(exc, TerminationSignal):
        return None
    sig = getattr(exc, "signal", None)
    name = signals.Signals(sig).name if isinstance(sig, int) and sig in iter(signals.Signals) else f"signal {sig}"
    flow = _prefect_tags().get(PREFECT_FLOW_RUN_TAG)
    where = f"flow run {flow}" if flow else "its flow run"
    try:
        from prefect._internal.control_listener import get_intent

        intent = get_intent()
    except Exception:  # noqa: BLE001 - an older Prefect without the control channel
        intent = None
    if intent == "cancel":
        return (f"cancelled in Prefect: {where} was cancelled (Prefect UI Cancel, `prefect flow-run cancel` or the "
                f"API) and its worker stopped the process with {name}; rerun it to resume from the last epoch")
    return (f"stopped by {name} from outside Prefect (a kill, `difflab stack down`, a container or machine "
            f"shutting down) while running {where}; rerun it to resume from the last epoch")


def _prefect_tags() -> dict[str, str]:
    """The Prefect flow run a run belongs to, so runs made on any worker can be matched back."""
    try:
        from prefect.runtime import flow_run

        return {PREFECT_FLOW_RUN_TAG: str(flow_run.id)} if flow_run.id else {}
    except Exception:  # noqa: BLE001 - outside Prefect there is nothing to tag
        return {}

