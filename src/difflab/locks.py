"""Inter-process file locks, so runs started together in one folder share work instead of colliding.

An OS lock (fcntl.flock) on a small file: the kernel releases it when its holder exits or is
killed, so a crashed run never leaves a stale lock behind. The lock file holds the holder's pid
for the message a waiting run prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Callable, Iterator


class LockTimeout(TimeoutError):
    """Another process held the lock for longer than the caller would wait."""


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        os.lseek(fd, 0, os.SEEK_SET)
        pid = os.read(fd, 32).decode().strip()
        if pid:
            return f"pid {int(pid)}"
    return "another process"


@contextlib.contextmanager
def file_lock(path: str | Path, timeout_s: float | None = None, poll_s: float = 0.5,
              on_wait: Callable[[str], None] | None = None) -> Iterator[bool]:
    """Hold an exclusive lock on path for the block; yields whether it had to wait for another holder.

    A non-blocking try first; if another process holds it, on_wait(holder) is called once and the
    lock is polled until it frees or timeout_s passes (None: as long as the holder lives).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        waited = False
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    waited = True
                    if on_wait is not None:
                        on_wait(_holder(fd))
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockTimeout(f"{path} is still held by {_holder(fd)} after {timeout_s:.0f} s; wait for "
                                      "that run to finish (or stop it) and rerun") from None
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, str(os.getpid()).encode())
        try:
            yield waited
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
