"""Is a process still the one we started? Used by the stack (its own services) and by the run doctor
(the process that opened an MLflow run). Plain Python, no dependencies."""

from __future__ import annotations

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
