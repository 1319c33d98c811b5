"""Prefect's retry_condition_fn for every task with retries: retry only what a second try can fix."""

from __future__ import annotations

from difflab import tracking
from difflab.errors import is_retryable


def retry_if_transient(task, task_run, state) -> bool:
    """False for user and programming errors (see difflab.errors), so they fail once with one FAILED run."""
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    exc = exc if isinstance(exc, BaseException) else None
    return is_retryable(exc) and not tracking.is_unreachable(exc)  # MLflow's own retries already waited
