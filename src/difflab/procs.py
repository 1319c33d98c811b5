"""Is a process still the one we started? Used by the stack (its own services) and by the run doctor
(the process that opened an MLflow run). Plain Python, no dependencies."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path


def hostname() -> str:
    """This machine's name, as Prefect's process worker writes it into a flow run's infrastructure_pid."""
    return socket.gethostname()


def proc_start_time(pid: int) -> str | None:
    """The kernel's start time of pid (clock ticks since boot), or None if it is gone or a zombie.
    A pid recycled after a reboot or wrap-around has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def alive(pid: int, start_time: str | None = None) -> bool:
    """pid runs (and, given its recorded start time, is still that same process)."""
    if Path("/proc").is_dir():
        now = proc_start_time(pid)
        return now is not None and (not start_time or now == start_time)
    try:  # no procfs (macOS): signal 0 is the best we have
        os.kill(pid, 0)
    except PermissionError:
        return True
    except OSError:
        return False
    return True


PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
"""prctl(2) options (linux/prctl.h)."""


def _libc_prctl():
    """libc's prctl on Linux, else None (macOS). Looked up in the parent: a preexec_fn must not import."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _prctl(option: int, value: int) -> bool:
    """prctl(option, value); False where it is not available or refused."""
    fn = _libc_prctl()
    return fn is not None and fn(option, value, 0, 0, 0) == 0


def die_with_parent_fn():
    """A preexec_fn for subprocess.Popen: the child gets SIGTERM when the thread that started it ends, however
    it ends (SIGKILL included), so a helper server never outlives its owner as an orphan. None off Linux."""
    import signal

    fn = _libc_prctl()
    if fn is None:
        return None
    sig = int(signal.SIGTERM)
    return lambda: fn(PR_SET_PDEATHSIG, sig, 0, 0, 0)


@contextlib.contextmanager
def children_die_with_parent():
    """Within the block, every subprocess.Popen (Prefect's temporary server among them) starts with
    die_with_parent_fn's preexec_fn, unless the caller gave its own preexec_fn or start_new_session (a detached server)."""
    import subprocess

    real = subprocess.Popen
    preexec = die_with_parent_fn()

    class Popen(real):  # type: ignore[misc,valid-type]
        def __init__(self, *args, **kwargs):
            if preexec is not None and kwargs.get("preexec_fn") is None and not kwargs.get("start_new_session"):
                kwargs["preexec_fn"] = preexec
            super().__init__(*args, **kwargs)

    subprocess.Popen = Popen
    try:
        yield
    finally:
        subprocess.Popen = real


def become_subreaper() -> bool:
    """Orphaned descendants of this process are re-parented to it instead of init (Linux), so they can be
    found and stopped (the test suite's leak check). Returns whether it took effect."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)
