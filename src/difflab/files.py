"""Files that survive faults: atomic writes, loads that name a corrupt file, and a disk-full error that says where.

A checkpoint or cache is written to a temp file beside it and renamed into place, so a
crash leaves either the old file or the new one, never half of one; the temp file is
removed when the write fails. A file that cannot be read is reported by name, and a
cache or resume file can be set aside (renamed *.corrupt-<timestamp>) so the work is redone.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("difflab")

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_MESSAGES = ("no space left on device", "database or disk is full", "disk quota exceeded")
"""How a full disk reads in errors that lost their errno (SQLite through SQLAlchemy, torch's C++ writer)."""
WORKDIR_ENV = "DIFFLAB_WORKDIR"


def workdir() -> Path:
    """The one folder for data, checkpoints, caches and inputs: $DIFFLAB_WORKDIR, else ./.difflab."""
    return Path(os.environ.get(WORKDIR_ENV) or ".difflab")


LOW_SPACE_BYTES = 16 * 2**20
"""Below this much free space, a failed write is taken to be a full disk (torch's writer hides the errno)."""


class CorruptFileError(ValueError):
    """A file exists but cannot be read back (truncated, overwritten, not what it should be)."""

    def __init__(self, path: str | Path, what: str, reason: str, fix: str):
        self.path = Path(path)
        super().__init__(f"{what} {path} is corrupt or truncated ({reason}); {fix}")


class DiskFullError(OSError):
    """No space left where difflab writes; the message names the file and its filesystem."""

    def __init__(self, path: str | Path, what: str = "file"):
        path = Path(path)
        free = _free_mb(path)
        super().__init__(errno.ENOSPC, f"disk full: no space left to write the {what} {path} "
                                       f"({free} free on that filesystem); free some space and rerun "
                                       "(training resumes from its last checkpoint)")
        self.filename = str(path)

    def __str__(self) -> str:
        return self.args[1]


def _free_mb(path: Path) -> str:
    for p in (path, *path.parents):
        if p.exists():
            return f"{shutil.disk_usage(p).free / 2**20:.0f} MB"
    return "unknown space"


def is_disk_full(exc: BaseException | None, path: str | Path | None = None) -> bool:
    """Whether exc (or anything in its cause chain) is the disk running out of space."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        text = str(exc).lower()
        if any(m in text for m in DISK_FULL_MESSAGES):
            return True
        if path is not None and "write failed" in text and _low_space(Path(path)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _low_space(path: Path) -> bool:
    for p in (path, *path.parents):
        if p.exists():
            return shutil.disk_usage(p).free < LOW_SPACE_BYTES
    return False


def atomic_torch_save(obj: Any, path: str | Path, what: str = "file") -> Path:
    """torch.save to a temp file beside path, then rename; the temp file never outlives a failed write."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(path, what) from exc
        raise
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        tmp.replace(path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, Exception) and is_disk_full(exc, path):
            raise DiskFullError(path, what) from exc
        raise
    return path


def torch_load(path: str | Path, what: str = "file", fix: str = "delete it and rerun to recreate it", **kwargs) -> Any:
    """torch.load that names the file when it cannot be read (a truncated file otherwise gives Errno 22)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        return torch.load(path, **kwargs)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError,
            AttributeError, ImportError, IndexError, TypeError) as exc:
        if isinstance(exc, OSError) and exc.errno not in (errno.EINVAL, None):
            raise  # permissions and the like are not corruption
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptFileError(path, what, reason[:200], fix) from exc


def set_aside(path: str | Path, reason: str = "") -> Path:
    """Rename a corrupt file to <name>.corrupt-<timestamp> (kept for inspection) and log it."""
    path = Path(path)
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
    path.replace(target)
    log.warning("set aside corrupt %s as %s%s; redoing the work", path, target, f" ({reason})" if reason else "")
    return target
