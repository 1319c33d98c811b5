"""The one module that talks to MLflow.

Runs are addressed by id, never through a shared "active run" across threads:
each task opens its own run context by id, so Prefect may run tasks anywhere.
Default store: sqlite:///mlflow.db with artifacts under ./mlruns; MLFLOW_TRACKING_URI
(or the config) points everything at a tracking server instead.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from difflab.config import TrackingConfig
from difflab.errors import TrackingUnreachable  # noqa: F401 - raised here, re-exported
from difflab.provenance import cache_key, code_version, git_commit  # noqa: F401 - re-exported

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_ARTIFACT_DIR = "mlruns"
CACHE_KEY_TAG = "difflab.cache_key"
STAGE_TAG = "difflab.stage"
REUSED_TAG = "difflab.reused_from"
ERROR_TAG = "difflab.error"
HOST_TAG = "difflab.host"
PID_TAG = "difflab.pid"
PID_START_TAG = "difflab.pid_start"
"""Which process opened a run: the run doctor marks RUNNING runs FAILED once that process is gone."""
PREFECT_FLOW_RUN_TAG = "prefect.flow_run_id"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
"""What MLflow 3's UI calls a model-training experiment (the other kind is genai_development)."""
UI_MODEL_TRAINING = "workflowType=machine_learning"
"""MLflow >= 3.5's UI takes the experiment kind from its GenAI / Model training switch (this URL query or
the browser's last choice), not from the tag: links carry it so they open on runs, not the GenAI overview."""
_BATCH = 900  # MLflow's log_batch limit is 1000 metrics per call
_PARAM_MAX = 6000


def tracking_uri(cfg: TrackingConfig | None = None) -> str:
    return (cfg.tracking_uri if cfg else None) or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


HEALTHY_AUTH_CODES = (401, 403)
"""Answers of an MLflow server behind authentication to an anonymous /health probe."""


def configure(cfg: TrackingConfig | None = None) -> str:
    cfg = cfg or TrackingConfig()
    # MLflow's defaults (7 retries, backoff 2, 120 s timeout) wait 25 minutes on a dead server.
    for key, value in {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": cfg.http_max_retries,
                       "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": 1,
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": cfg.http_timeout_s}.items():
        os.environ.setdefault(key, str(value))
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    _create_store_once(uri)
    return uri


_READY_STORES: set[str] = set()


def _create_store_once(uri: str) -> None:
    """Create a sqlite store's tables under a lock beside the db: two runs started together in a new folder
    would otherwise both create them, and one fails with `table ... already exists`."""
    if not uri.startswith("sqlite:///") or uri in _READY_STORES:
        return
    from difflab.locks import file_lock

    db = Path(uri[len("sqlite:///"):])
    with file_lock(db.with_name(db.name + ".lock")):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # runs MLflow's table creation
    _READY_STORES.add(uri)


class StoreLocked(RuntimeError):
    """A local sqlite store stayed locked by another process past tracking.store_lock_timeout_s."""


def store_holders(path: str | Path) -> list[str]:
    """'pid N (command)' of every other process that has path open (psutil; [] where it cannot tell)."""
    try:
        import psutil
    except ImportError:
        return []
    target = os.path.realpath(path)
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid == os.getpid():
            continue
        try:
            if any(os.path.realpath(f.path) == target for f in proc.open_files()):
                command = " ".join(" ".join(proc.info["cmdline"] or [proc.name()]).split())
                found.append(f"pid {proc.pid} ({command[:80]})")
        except (psutil.Error, OSError):
            continue
    return found


def locked_store_line(db: str | Path, waited_s: float | None = None) -> str:
    """The one line for a locked sqlite store: which file, who holds it, what to do."""
    holders = store_holders(db)
    who = ", ".join(holders) if holders else "another process (not found among this user's processes)"
    waited = f" (waited {waited_s:g} s)" if waited_s is not None else ""
    return (f"the MLflow store {Path(db).resolve()} is locked by {who}{waited}; close that "
            "program or let that run finish, then rerun (or raise tracking.store_lock_timeout_s)")


def is_locked_store(exc: BaseException | None) -> bool:
    """Whether exc (or its cause) is SQLite's 'database is locked'."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, StoreLocked) or "database is locked" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _probe_sqlite(uri: str, timeout_s: float) -> None:
    """Take and release a write lock on an existing sqlite store, waiting up to timeout_s for another holder."""
    import sqlite3
    import time

    db = Path(uri[len("sqlite:///"):])
    if not db.is_file():
        return
    started = time.monotonic()
    try:
        con = sqlite3.connect(db, timeout=timeout_s)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.rollback()
        finally:
            con.close()
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise
        raise StoreLocked(locked_store_line(db, round(time.monotonic() - started))) from None


def probe(cfg: TrackingConfig | None = None) -> None:
    """Stop at once, in one line, when an http(s) tracking server does not answer, or when a local sqlite
    store stays locked by another program for tracking.store_lock_timeout_s."""
    import urllib.error
    import urllib.request

    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        _probe_sqlite(uri, (cfg or TrackingConfig()).store_lock_timeout_s)
        return
    if not uri.startswith(("http://", "https://")):
        return
    timeout = (cfg or TrackingConfig()).probe_timeout_s
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError as exc:
        if exc.code in HEALTHY_AUTH_CODES:
            return  # an MLflow server behind authentication: it answered
        raise TrackingUnreachable(
            f"MLflow tracking server {uri} answered HTTP {exc.code} at /health: not an MLflow server, or a proxy "
            "could not reach it; check MLFLOW_TRACKING_URI / tracking.tracking_uri (and NO_PROXY for a local "
            "server)") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingUnreachable(
            f"MLflow tracking server {uri} is not reachable ({reason}); start it (difflab stack up, or "
            "mlflow server), fix MLFLOW_TRACKING_URI / tracking.tracking_uri, or unset it to track to "
            f"{DEFAULT_TRACKING_URI} in this folder") from None


_UNREACHABLE_MARKS = ("max retries exceeded", "connection refused", "connectionerror", "read timed out",
                      "connect timeout", "failed to establish a new connection", "remotedisconnected",
                      "connection aborted", "connection reset")


def is_unreachable(exc: BaseException | None) -> bool:
    """Whether exc (or its cause) is the tracking server not answering, as opposed to it refusing a request."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, TrackingUnreachable):
            return True
        text = f"{type(exc).__name__} {exc}".lower()
        if ("api request to" in text or "requests.exceptions" in type(exc).__module__
                or "urllib3" in type(exc).__module__) and any(m in text for m in _UNREACHABLE_MARKS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def _fail_fast() -> Iterator[None]:
    """No retries while recording a failure caused by a dead server: each call would wait out the backoff."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "3"})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def experiment_id(name: str) -> str:
    """Get or create the experiment; local sqlite stores keep artifacts under ./mlruns."""
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            _mark_model_training(exp.experiment_id)
        return exp.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        location = (Path(DEFAULT_ARTIFACT_DIR).resolve() / "experiments" / name).as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except mlflow.exceptions.MlflowException:  # created concurrently by another process
        return mlflow.get_experiment_by_name(name).experiment_id


def _mark_model_training(exp_id: str) -> None:
    """MLflow 3's UI opens an unmarked experiment on its GenAI overview, where no run is shown."""
    with contextlib.suppress(mlflow.exceptions.MlflowException):
        MlflowClient().set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


@contextlib.contextmanager
def run(name: str, experiment: str, parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None,
        run_id: str | None = None) -> Iterator[str]:
    """Open (or reopen, with run_id) a run in this thread; it ends FAILED if the body raises."""
    if run_id is None:
        all_tags = {**_prefect_tags(), **process_tags(), **{k: str(v) for k, v in (tags or {}).items()}}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        else:  # a new flow run: first close the runs of processes that died (one cheap query)
            _reap_quietly(experiment)
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


def dead_run_reason(run, stale_hours: float | None = None, now_ms: int | None = None) -> str | None:
    """Why a RUNNING run is dead, or None while its process may still be writing to it.

    On this host: its pid is gone, or runs with another start time (recycled). Another host's
    runs (and runs without process tags) are left alone, unless `stale_hours` is given and the
    run started longer ago than that; MLflow keeps no heartbeat, so age is the only evidence."""
    from difflab.procs import alive, hostname

    tags = run.data.tags
    host, pid = tags.get(HOST_TAG), tags.get(PID_TAG)
    if host == hostname() and pid and pid.isdigit():
        if not alive(int(pid), tags.get(PID_START_TAG)):
            return f"process {pid} on {host} that ran it is gone (killed, crashed or the machine restarted)"
        return None
    if stale_hours is not None and run.info.start_time:
        age_h = ((now_ms or _now_ms()) - run.info.start_time) / 3_600_000
        if age_h > stale_hours:
            where = f"on {host}" if host else "with no process recorded"
            return f"still RUNNING {age_h:.1f} h after it started {where} (older than {stale_hours:g} h)"
    return None


def find_dead_runs(experiments: Sequence[str] | None = None, stale_hours: float | None = None) -> list[dict]:
    """RUNNING runs whose process is gone: [{run_id, run_name, experiment_id, reason, flow_run_id}]."""
    client = MlflowClient()
    if experiments:
        exps = [e for e in (mlflow.get_experiment_by_name(n) for n in experiments) if e is not None]
    else:
        exps = client.search_experiments()
    if not exps:
        return []
    runs = client.search_runs([e.experiment_id for e in exps], "attributes.status = 'RUNNING'", max_results=5000)
    now = _now_ms()
    found = []
    for r in runs:
        reason = dead_run_reason(r, stale_hours, now)
        if reason:
            found.append({"run_id": r.info.run_id, "run_name": r.info.run_name, "experiment_id": r.info.experiment_id,
                          "reason": reason, "flow_run_id": r.data.tags.get(PREFECT_FLOW_RUN_TAG)})
    return found


def mark_failed(run_id: str, reason: str) -> None:
    """End a run FAILED with the reason in its difflab.error tag; its artifacts (checkpoints) stay."""
    client = MlflowClient()
    client.set_tag(run_id, ERROR_TAG, reason[:_PARAM_MAX])
    client.set_terminated(run_id, "FAILED")


def reap_dead_runs(experiments: Sequence[str] | None = None, stale_hours: float | None = None,
                   crash_flow_runs: bool = True) -> list[dict]:
    """Mark dead RUNNING runs FAILED and, where Prefect answers, their flow runs CRASHED."""
    dead = find_dead_runs(experiments, stale_hours)
    for d in dead:
        mark_failed(d["run_id"], d["reason"])
    flow_runs = {d["flow_run_id"]: d["reason"] for d in dead if d["flow_run_id"]}
    if crash_flow_runs and flow_runs and _flow_run_crasher is not None:
        crashed = _flow_run_crasher(flow_runs)
        for d in dead:
            d["flow_run_crashed"] = d["flow_run_id"] in crashed
    return dead


FlowRunCrasher = Callable[[Mapping[str, str]], list[str]]
"""crash({flow_run_id: reason}) -> the ids set CRASHED."""
_flow_run_crasher: FlowRunCrasher | None = None


def set_flow_run_crasher(crash: FlowRunCrasher | None) -> None:
    """The hook through which the run doctor crashes Prefect flow runs: `ops.runs.crash_flow_runs`, registered
    by the `flows` package, so this library never imports ops. Unset, only the MLflow side is fixed."""
    global _flow_run_crasher
    _flow_run_crasher = crash


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


def _reap_quietly(experiment: str) -> None:
    """The run doctor at a flow's start: never let housekeeping fail the flow."""
    try:
        # Prefect's side only where an API is at hand: in a flow run, or a server named by PREFECT_API_URL
        # (outside both, Prefect's client would start a temporary server just for this).
        prefect = bool(_prefect_tags()) or bool(os.environ.get("PREFECT_API_URL"))
        for d in reap_dead_runs([experiment], crash_flow_runs=prefect):
            print(f"difflab: marked MLflow run {d['run_id']} ({d['run_name']}) FAILED: {d['reason']}")
    except Exception:  # noqa: BLE001
        pass


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
    flow = _prefect_tags().get("prefect.flow_run_id")
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

        return {"prefect.flow_run_id": str(flow_run.id)} if flow_run.id else {}
    except Exception:  # noqa: BLE001 - outside Prefect there is nothing to tag
        return {}


def log_params(params: Mapping[str, Any], run_id: str | None = None) -> None:
    rid = run_id or mlflow.active_run().info.run_id
    items = [Param(k, str(v)[:_PARAM_MAX]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        MlflowClient().log_batch(rid, params=items[i:i + 100])


def log_tags(tags: Mapping[str, Any], run_id: str | None = None) -> None:
    rid = run_id or mlflow.active_run().info.run_id
    MlflowClient().log_batch(rid, tags=[RunTag(k, str(v)[:_PARAM_MAX]) for k, v in tags.items()])


def log_metrics(metrics: Mapping[str, float], step: int | None = None, run_id: str | None = None,
                model_id: str | None = None) -> None:
    """Metrics of a run; with model_id also linked to that logged model (its Models-tab columns)."""
    rid = run_id or mlflow.active_run().info.run_id
    now = _now_ms()
    items = [Metric(k, float(v), now, step or 0, model_id=model_id) for k, v in metrics.items()]
    for i in range(0, len(items), _BATCH):
        MlflowClient().log_batch(rid, metrics=items[i:i + _BATCH])


def log_series(key: str, values: Sequence[float], first_step: int, run_id: str | None = None) -> None:
    """Per-step values (e.g. every optimizer step's loss) in a few batched calls."""
    rid = run_id or mlflow.active_run().info.run_id
    now = _now_ms()
    items = [Metric(key, float(v), now, first_step + i) for i, v in enumerate(values)]
    for i in range(0, len(items), _BATCH):
        MlflowClient().log_batch(rid, metrics=items[i:i + _BATCH])


def log_image(image, name: str, step: int | None = None) -> None:
    """A stepped image (scrubbable by step in the MLflow UI) when step is given, else images/<name>.png."""
    if step is None:
        mlflow.log_image(image, artifact_file=f"images/{name}.png")
    else:
        mlflow.log_image(image, key=name, step=int(step), synchronous=True)


def log_file(path: str | Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path)


def log_text(text: str, artifact_file: str) -> None:
    mlflow.log_text(text, artifact_file)


def log_dict(data: dict, artifact_file: str) -> None:
    mlflow.log_dict(data, artifact_file)


def log_model(model, registered_name: str | None = None) -> str:
    """Log a torch model under `model` (fast: explicit pip requirements) and register it."""
    import logging

    import torch

    # pickle, not MLflow's default pt2 export: the UNets take (x, t, c) and need no tracing to reload.
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
    info = mlflow.pytorch.log_model(
        model.cpu(), name="model", registered_model_name=registered_name, serialization_format="pickle",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
    )
    return info.model_uri

# ---------------------------------------------------------------------------------------------
# Models a user can call: every Part B checkpoint logged as an MLflow pyfunc model whose code is this
# package (difflab.generator does the work; this adapter is MLflow's side: tables in and out, and a bad
# request as MLflow's INVALID_PARAMETER_VALUE, which `mlflow models serve` answers with HTTP 400).

PYFUNC_LOADER = "difflab.tracking"
"""The loader module MLflow imports from the model's own code/ folder: its `_load_pyfunc(data_path)`."""
CHECKPOINT_TAG = "difflab.checkpoint"
"""On a logged model: `final`, or `epoch_0005` for a snapshot epoch's checkpoint."""
MODEL_METADATA_KEY = "difflab"
"""MLmodel metadata: {kind, stage, conditional, num_timesteps, guidance} for clients (`difflab generate`)."""


class ModelNotFound(ValueError):
    """A models:/ URI (name, version or alias) that the registry does not hold; the message says what to do."""


def _pyfunc_signature(model):
    """Request/response tables for a DDPM (difflab.generator.REQUEST_FIELDS / RESPONSE_FIELDS); tensors of
    (N, 28, 28) float32 in and out for the denoiser."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema, TensorSpec

    from difflab import generator

    if model.kind == generator.DENOISER_KIND:
        spec = Schema([TensorSpec(np.dtype(np.float32), generator.DENOISER_SHAPE)])
        return ModelSignature(spec, spec)

    def nested(dtype: str, depth: int):
        return dtype if depth == 0 else Array(nested(dtype, depth - 1))

    inputs = Schema([ColSpec(dtype, name, required=(required and model.conditional) or name == "count")
                     for name, dtype, required in generator.REQUEST_FIELDS])
    outputs = Schema([ColSpec(nested(dtype, depth), name) for name, dtype, depth in generator.RESPONSE_FIELDS])
    return ModelSignature(inputs, outputs)


def _pyfunc_example(model):
    import numpy as np
    import pandas as pd

    from difflab.generator import DENOISER_KIND, DENOISER_SHAPE, UNCONDITIONAL

    if model.kind == DENOISER_KIND:
        return np.zeros((1, *DENOISER_SHAPE[1:]), np.float32)
    if model.conditional:
        return pd.DataFrame([{"digit": 7, "count": 4, "guidance": model.default_guidance, "seed": 0,
                              "trajectory_steps": 0}])
    return pd.DataFrame([{"digit": UNCONDITIONAL, "count": 4, "seed": 0, "trajectory_steps": 0}])


def _pip_requirements() -> list[str]:
    import numpy
    import pandas
    import pydantic
    import torch

    return [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"pydantic=={pydantic.VERSION}", f"numpy=={numpy.__version__}", f"pandas=={pandas.__version__}"]


def log_generator(checkpoint: str | Path, name: str, step: int, registered_name: str | None = None,
                  metrics: Mapping[str, float] | None = None, params: Mapping[str, Any] | None = None,
                  tags: Mapping[str, Any] | None = None) -> str:
    """Log a Part B checkpoint to the active run as a pyfunc model called `name` at `step` (the epoch), with
    its signature, an input example, the checkpoint as data and this package as code (it loads where difflab
    is not installed); link `metrics` to it, register it as `registered_name` if given. Returns the model id."""
    import logging

    from difflab import generator

    model = generator.load(checkpoint, "cpu")
    meta = {"kind": model.kind, "stage": model.extra.get("stage")}
    if model.kind == generator.GENERATOR_KIND:
        meta.update(conditional=model.conditional, num_timesteps=model.num_timesteps,
                    guidance=model.default_guidance)
    logging.getLogger("mlflow.models.model").setLevel(logging.ERROR)  # no "model logged" chatter per epoch
    info = mlflow.pyfunc.log_model(
        name=name, loader_module=PYFUNC_LOADER, data_path=str(checkpoint),
        code_paths=[str(Path(__file__).resolve().parent)], signature=_pyfunc_signature(model),
        input_example=_pyfunc_example(model), pip_requirements=_pip_requirements(),
        registered_model_name=registered_name, metadata={MODEL_METADATA_KEY: meta}, step=int(step),
        params={k: str(v)[:_PARAM_MAX] for k, v in (params or {}).items()} or None,
        tags={k: str(v) for k, v in (tags or {}).items()} or None, model_type=model.kind)
    if metrics:
        log_metrics(metrics, step=step, model_id=info.model_id)
    return info.model_id


def link_model_metrics(model_id: str, metrics: Mapping[str, float], run_id: str | None = None) -> None:
    """Metrics measured on a logged model by another run (the evaluation): logged to that run, linked to the
    model (its Models-tab columns, `search_logged_models(order_by=...)`), and the model recorded as the
    run's input."""
    from mlflow.entities import LoggedModelInput

    rid = run_id or mlflow.active_run().info.run_id
    MlflowClient().log_inputs(rid, models=[LoggedModelInput(model_id)])
    log_metrics(metrics, run_id=rid, model_id=model_id)


def register_logged_model(model_id: str, name: str) -> str:
    """Register a logged model as a new version of `name`; returns the version."""
    return mlflow.register_model(f"models:/{model_id}", name).version


def logged_model(model_id: str):
    return mlflow.get_logged_model(model_id)


def logged_model_metrics(model_id: str) -> dict[str, float]:
    """The newest value of every metric linked to a logged model (the training's and the evaluation's)."""
    latest: dict[str, Any] = {}
    for m in logged_model(model_id).metrics or []:
        if m.key not in latest or (m.timestamp, m.step) >= (latest[m.key].timestamp, latest[m.key].step):
            latest[m.key] = m
    return {k: m.value for k, m in latest.items()}


def find_logged_model(run_id: str, name: str) -> str | None:
    """The id of the model called `name` that run_id logged (the newest, if several), or None."""
    run = get_run(run_id)
    found = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
                                        order_by=[{"field_name": "creation_timestamp", "ascending": False}])
    return found[0].model_id if found else None


def load_pyfunc(uri: str):
    """mlflow.pyfunc.load_model(uri); a models:/ name, version or alias the registry lacks is ModelNotFound."""
    try:
        return mlflow.pyfunc.load_model(uri)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or "not found" in str(exc):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelNotFound(f"{uri} is not in the registry at {mlflow.get_registry_uri()} ({first}); list "
                                "the models and aliases with `mlflow ui` (Models page) or give another version, "
                                "e.g. models:/difflab-class-ddpm/latest") from None
        raise


class _ServedModel:
    """What MLflow calls after `_load_pyfunc`: a request table in, a table of images out (a DDPM), or noisy
    digits in and clean ones out (the denoiser). An InvalidRequest becomes MLflow's INVALID_PARAMETER_VALUE,
    whose message names the row and field; `mlflow models serve` answers it with HTTP 400 and keeps serving."""

    def __init__(self, model):
        self.model = model

    def get_raw_model(self):
        """The difflab.generator object (its `.model` is the torch network)."""
        return self.model

    def predict(self, model_input, params=None):
        import numpy as np
        import pandas as pd

        from difflab.generator import DENOISER_KIND, RESPONSE_FIELDS, InvalidRequest

        try:
            if self.model.kind == DENOISER_KIND:
                data = model_input.to_numpy() if isinstance(model_input, pd.DataFrame) else model_input
                return self.model.denoise(np.asarray(data))
            if isinstance(model_input, pd.DataFrame):
                rows = model_input.to_dict("records")
            elif isinstance(model_input, Mapping):
                rows = [dict(model_input)]
            else:
                rows = list(model_input)
            answers = self.model.generate(rows)
        except InvalidRequest as exc:
            raise mlflow.exceptions.MlflowException.invalid_parameter_value(str(exc)) from None
        return pd.DataFrame([a.row() for a in answers], columns=[name for name, _, _ in RESPONSE_FIELDS])


def _load_pyfunc(data_path: str) -> _ServedModel:
    """MLflow's entry point for a logged Part B model (loader_module = PYFUNC_LOADER)."""
    from difflab import generator

    return _ServedModel(generator.load(data_path))


def log_dataset(features, targets, name: str, digest: str, source: str, context: str,
                run_id: str | None = None) -> None:
    """An MLflow input dataset; the source is described by tags (a path string is ambiguous to MLflow)."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    dataset = mlflow.data.from_numpy(features, targets=targets, name=name, digest=digest,
                                     source=CodeDatasetSource(tags={"difflab.data_source": source}))
    rid = run_id or mlflow.active_run().info.run_id
    MlflowClient().log_inputs(rid, [DatasetInput(dataset._to_mlflow_entity(),
                                                 [InputTag(MLFLOW_DATASET_CONTEXT, context)])])


def find_cached_run(experiment: str, cache_key: str) -> str | None:
    """The newest FINISHED run that trained with this cache key and holds its artifacts.

    A `(reused)` run only points at such a run (tag difflab.reused_from); older versions copied the
    cache key into it, so a pointer is followed to the run it names rather than returned.
    """
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = MlflowClient().search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{CACHE_KEY_TAG}` = '{cache_key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=50,
    )
    for r in runs:
        original = r.data.tags.get(REUSED_TAG)
        if original is None:
            return r.info.run_id
        with contextlib.suppress(Exception):
            if get_run(original).info.status == "FINISHED":
                return original
    return None


def get_run(run_id: str):
    return MlflowClient().get_run(run_id)


def download(run_id: str, artifact_path: str, dst: str | Path | None = None) -> Path:
    dst = Path(dst or tempfile.mkdtemp(prefix="difflab-"))
    dst.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dst)))


def artifact_paths(run_id: str, path: str | None = None) -> list[str]:
    """Every artifact file of a run (recursively), as paths relative to its artifact root."""
    out: list[str] = []
    for a in MlflowClient().list_artifacts(run_id, path):
        out += artifact_paths(run_id, a.path) if a.is_dir else [a.path]
    return out


def latest_model_version(name: str):
    versions = MlflowClient().search_model_versions(f"name = '{name}'", order_by=["version_number DESC"],
                                                    max_results=1)
    return versions[0] if versions else None


def model_versions_of_run(name: str, run_id: str) -> list:
    """Versions of a registered model that a run logged (newest first)."""
    return MlflowClient().search_model_versions(f"name = '{name}' and run_id = '{run_id}'",
                                                order_by=["version_number DESC"])


def tag_model_version(name: str, version: str, tags: Mapping[str, Any]) -> None:
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value)[:_PARAM_MAX])


def set_model_alias(name: str, alias: str, version: str) -> None:
    MlflowClient().set_registered_model_alias(name, alias, version)


def model_version_by_alias(name: str, alias: str):
    """The version models:/<name>@<alias> points at, or None (no such model or alias)."""
    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def search_runs(experiments: Sequence[str] | None = None, filter_string: str = "", run_ids: Sequence[str] = ()):
    """Runs as a pandas DataFrame (mlflow.search_runs' layout), by experiment names, filter or ids."""
    import pandas as pd

    if run_ids:
        frames = [mlflow.search_runs(experiment_ids=[get_run(r).info.experiment_id],
                                     filter_string=f"attributes.run_id = '{r}'") for r in run_ids]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    try:
        return mlflow.search_runs(experiment_names=list(experiments or []), filter_string=filter_string)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code != "INVALID_PARAMETER_VALUE" or not filter_string:
            raise
        first = str(exc.message).splitlines()[0] if str(exc.message) else exc.error_code
        raise ValueError(f"filter {filter_string!r} is not a valid MLflow search filter ({first}); fix --set "
                         "filter=... (param and tag values are strings: quote them, e.g. "
                         "params.class_ddpm.guidance = '5.0')") from None


def child_runs(run_id: str) -> list:
    """The runs nested directly under run_id."""
    exp = get_run(run_id).info.experiment_id
    return MlflowClient().search_runs([exp], f"tags.`mlflow.parentRunId` = '{run_id}'")


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key)]


def run_url(run_id: str) -> str:
    """Where a person opens the run; for a local store, after `mlflow ui`."""
    r = get_run(run_id)
    uri = mlflow.get_tracking_uri()
    base = uri.rstrip("/") if uri.startswith("http") else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{r.info.experiment_id}/runs/{run_id}?{UI_MODEL_TRAINING}"


def artifact_url(run_id: str, path: str) -> str:
    """Where the MLflow UI shows one artifact of a run (e.g. the report page)."""
    return run_url(run_id).replace(f"?{UI_MODEL_TRAINING}", f"/artifacts/{path}?{UI_MODEL_TRAINING}")


def ui_hint() -> str:
    uri = mlflow.get_tracking_uri()
    if uri.startswith("http"):
        return f"open {uri}/#/experiments?{UI_MODEL_TRAINING} to browse runs"
    return f"run `mlflow ui --backend-store-uri {uri}` and open http://127.0.0.1:5000/#/experiments?{UI_MODEL_TRAINING}"


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


# ---------------------------------------------------------------------------------------------
# The write-up page (`difflab report`): a run tree's facts, numbers and images as plain data for
# difflab.report_page, which never talks to MLflow itself.

REPORT_FLOWS = ("pipeline", "part_b", "part_a")
REPORT_ARTIFACT = "report/report.html"
_STEP_SEPARATORS = ("+step+", "%step%")
"""MLflow 3 names a stepped image images/<key>+step+<n>+timestamp+<ms>+<uuid>.png (older: % for +)."""


def newest_run(experiment: str, flow: str = "pipeline") -> str | None:
    """The newest finished run of a flow (tags.flow) in the experiment, if any."""
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = MlflowClient().search_runs([exp.experiment_id],
                                      f"tags.flow = '{flow}' and attributes.status = 'FINISHED'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def report_data(run_id: str):
    """A pipeline, part_b or part_a run and every stage under it, with images, as `report_page.RunData`."""
    from difflab.report_page import RunData

    try:
        top = get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ValueError(f"run {run_id} not found in {mlflow.get_tracking_uri()}; give a run id from "
                         "`difflab pipeline`'s output or the MLflow UI (or set MLFLOW_TRACKING_URI)") from None
    flow = top.data.tags.get("flow", "")
    if flow not in REPORT_FLOWS:
        raise ValueError(f"run {run_id} is a {flow or 'stage'} run; give a pipeline, part_b or part_a run "
                         "(the write-up covers a whole flow run)")
    stages: dict = {}
    parts = [top] if flow != "pipeline" else [r for r in child_runs(run_id) if r.data.tags.get("flow") in REPORT_FLOWS]
    for part in parts:
        stages[part.data.tags["flow"]] = _stage_data(part, with_images=False)
        for child in child_runs(part.info.run_id):
            st = _stage_data(child)
            stages[st.name] = st
    return RunData(run_id=run_id, name=top.info.run_name, url=run_url(run_id), flow=flow, status=top.info.status,
                   start_ms=top.info.start_time, seconds=_seconds(top.info), tracking_uri=mlflow.get_tracking_uri(),
                   params=dict(top.data.params), metrics=dict(top.data.metrics), tags=_user_tags(top), stages=stages)


def _stage_data(run, with_images: bool = True):
    """One run as StageData; a `<stage> (reused)` run shows the original run's images and metrics."""
    from difflab.report_page import StageData

    tags = run.data.tags
    name = tags.get(STAGE_TAG) or tags.get("flow") or run.info.run_name.removesuffix(" (reused)")
    source_id = tags.get(REUSED_TAG)
    source = run
    if source_id:
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # the original deleted: no images then
            source = get_run(source_id)
    return StageData(name=name, run_id=run.info.run_id, url=run_url(run.info.run_id), status=run.info.status,
                     seconds=_seconds(run.info), reused_from=source_id,
                     reused_from_url=run_url(source_id) if source_id else "",
                     original_seconds=_seconds(source.info) if source is not run else None,
                     params={**source.data.params, **run.data.params},
                     metrics={**source.data.metrics, **run.data.metrics}, tags=_user_tags(run),
                     images=_images(source.info.run_id) if with_images else [])


def _images(run_id: str) -> list:
    """Every image under images/ of a run (stepped ones with their step; MLflow's compressed copies skipped)."""
    from difflab.report_page import MIME, PageImage

    files = [p for p in artifact_paths(run_id, "images")
             if Path(p).suffix.lower() in MIME and "+compressed" not in p and "%compressed" not in p]
    if not files:
        return []
    out = []
    with tempfile.TemporaryDirectory(prefix="difflab-report-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="images", dst_path=tmp))
        for path in files:
            stem, step = _split_stepped(Path(path).stem)
            raw = (local / Path(path).relative_to("images")).read_bytes()
            out.append(PageImage.from_bytes(stem, path, raw, step))
    return out


def _split_stepped(stem: str) -> tuple[str, int | None]:
    """(key, step) of a stepped image's file stem; (stem, None) for any other image."""
    for sep in _STEP_SEPARATORS:
        if sep in stem:
            key, rest = stem.split(sep, 1)
            return key.replace("~", "/"), int(rest.split(sep[0], 1)[0])
    return stem, None


def copy_stepped_images(sources: Mapping[str, str], to_run_id: str) -> int:
    """Log every stepped image (step = epoch) of each source run again on to_run_id, as `<name>.<key>` at the same
    step; returns how many. The MLflow UI's chart view shows the top-level runs of an experiment (children stay
    folded under them), so the stage runs' images reach its image charts, and compare across runs, only from there.
    sources: name -> run id (a stage's own run, or the original run of a reused one)."""
    from PIL import Image

    count = 0
    for name, run_id in sources.items():
        files = [p for p in artifact_paths(run_id, "images") if p.endswith(".png") and "compressed" not in p
                 and _split_stepped(Path(p).stem)[1] is not None]
        if not files:
            continue
        with tempfile.TemporaryDirectory(prefix="difflab-images-") as tmp:
            local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="images", dst_path=tmp))
            for path in sorted(files):
                key, step = _split_stepped(Path(path).stem)
                with Image.open(local / Path(path).relative_to("images")) as im:
                    MlflowClient().log_image(to_run_id, im.copy(), key=f"{name}.{key}", step=step, synchronous=True)
                count += 1
    return count


def save_training_view(run_id: str) -> str:
    """Write (or refresh) the experiment's saved view of the training snapshots (`difflab.ui_views`): the runs
    page's Views menu lists it, its image grids open on the last epoch this top-level run carries of each stage;
    returns the address that opens it in the chart view."""
    from difflab import ui_views

    steps: dict[str, int] = {}
    for path in artifact_paths(run_id, "images"):
        key, step = _split_stepped(Path(path).stem.removesuffix("+compressed"))
        if step is not None:
            steps[key] = max(step, steps.get(key, step))
    exp_id = get_run(run_id).info.experiment_id
    MlflowClient().set_experiment_tag(exp_id, *ui_views.saved_view_tag(ui_views.training_view_state(steps), _now_ms()))
    uri = mlflow.get_tracking_uri()
    return ui_views.view_url(uri if uri.startswith("http") else "http://127.0.0.1:5000", exp_id, UI_MODEL_TRAINING)


def _seconds(info) -> float | None:
    if not info.start_time:
        return None
    return ((info.end_time or _now_ms()) - info.start_time) / 1000


def _user_tags(run) -> dict[str, str]:
    return {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}


def log_report_page(run_id: str, page: str | Path) -> None:
    """The page as report/report.html of the run, whatever the local file is called."""
    import shutil

    folder, name = REPORT_ARTIFACT.rsplit("/", 1)
    with tempfile.TemporaryDirectory(prefix="difflab-report-") as tmp:
        staged = Path(tmp) / name
        shutil.copyfile(page, staged)
        MlflowClient().log_artifact(run_id, str(staged), folder)
