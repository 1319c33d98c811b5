"""Which errors a user must fix (bad input) and which a second try may get past.

The CLI prints the first kind as one line with exit status 2; Prefect tasks retry only
the second kind, so a missing folder or a bad value fails once, not once per retry.
"""

from __future__ import annotations


class TrackingUnreachable(RuntimeError):
    """The tracking server does not answer; the message names the URI and what to do (raised by `tracking`)."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Errors whose message names the problem and the fix: a retry cannot succeed."""
    from pydantic import ValidationError

    from difflab.data import DataSourceError
    from difflab.files import DiskFullError

    types: list[type[BaseException]] = [FileNotFoundError, ValueError, DataSourceError, ValidationError,
                                        DiskFullError, TrackingUnreachable]
    try:
        from difflab.edits.backend import BackendUnavailable

        types.append(BackendUnavailable)
    except ImportError:
        pass
    return tuple(types)


PERMANENT_TYPES: tuple[type[BaseException], ...] = (TypeError, AttributeError, KeyError, NotImplementedError,
                                                    KeyboardInterrupt)
"""Programming errors and interrupts: retrying runs the same code on the same input again."""


def is_retryable(exc: BaseException | None) -> bool:
    """True unless exc is a user error or a programming error (a network hiccup, a lost worker: retry)."""
    if exc is None:
        return True
    return not isinstance(exc, user_error_types() + PERMANENT_TYPES)
