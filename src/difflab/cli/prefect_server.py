"""The Prefect side of a `difflab` flow command: probing PREFECT_API_URL, the temporary server this process
starts and stops, and keeping a user error's log record to its one line."""

from __future__ import annotations

from pathlib import Path

_OWN_SERVER = None
"""The temporary Prefect server this CLI started (never one a caller, such as a test harness, runs)."""


def start_prefect_once() -> None:
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


def stop_prefect_server() -> None:
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


def quiet_user_error_tracebacks() -> None:
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
