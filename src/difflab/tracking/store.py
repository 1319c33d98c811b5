"""The store: where runs are kept (configure, the tracking URI), whether it answers (probe), the sqlite
store's locks, and experiments. MLflow's defaults are tamed here once for every caller."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import mlflow
from mlflow.tracking import MlflowClient

from difflab.config import TrackingConfig
from difflab.errors import TrackingUnreachable
from difflab.names import EXPERIMENT_KIND_TAG

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_ARTIFACT_DIR = "mlruns"
EXPERIMENT_KIND = "custom_model_development"
"""What MLflow 3's UI calls a model-training experiment (the other kind is genai_development)."""
UI_MODEL_TRAINING = "workflowType=machine_learning"
"""MLflow >= 3.5's UI takes the experiment kind from its GenAI / Model training switch (this URL query or
the browser's last choice), not from the tag: links carry it so they open on runs, not the GenAI overview."""
_BATCH = 900  # MLflow's log_batch limit is 1000 metrics per call
_PARAM_MAX = 6000


def tracking_uri(cfg: TrackingConfig | None = None) -> str:
    return (cfg.tracking_uri if cfg else None) or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def current_uri() -> str:
    """The store this process tracks to now (what `configure` set)."""
    return mlflow.get_tracking_uri()


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


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
