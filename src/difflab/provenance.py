"""Where a result came from: the git commit of the checkout, a hash of the library's code, and the cache
key that decides whether a finished run can be reused instead of training again.

Plain Python (no MLflow): `tracking` tags runs with these, `tasks/` build cache keys from them.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any, Sequence

PACKAGE_DIR = Path(__file__).resolve().parent
"""src/difflab: the library whose code every trained stage depends on."""
KEY_CHARS = 20
VERSION_CHARS = 12


def git_commit() -> str:
    """The checkout's commit (12 hex digits), "-dirty" when tracked files have changes; "unknown" outside git."""
    try:
        root = PACKAGE_DIR.parents[1]
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def code_version(modules: Sequence[str] | None = None, root: Path | None = None) -> str:
    """sha256 (12 hex digits) over the library's Python files: every one under the package (None), or the
    named ones (paths relative to the package). Each file's relative path and bytes are hashed, in sorted
    order, so a file added, removed, renamed or edited anywhere in the package changes it."""
    pkg = Path(root or PACKAGE_DIR)
    paths = [pkg / m for m in modules] if modules else sorted(pkg.rglob("*.py"))
    h = hashlib.sha256()
    for path in paths:
        h.update(path.relative_to(pkg).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:VERSION_CHARS]


def package_hash(root: Path | None = None) -> str:
    """`code_version` of the whole package: what a trained stage's cache key takes as its code."""
    return code_version(None, root)


def cache_key(*parts: Any) -> str:
    """sha256 (20 hex digits) of the parts as sorted-key JSON (non-JSON values by str)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:KEY_CHARS]
