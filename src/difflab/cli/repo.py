"""Where the repository's flows/, tasks/ and ops/ are found, and loading a "module:name" reference from them."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
"""The repository root (src/difflab/cli/ is three folders below it)."""


def ensure_repo_on_path() -> None:
    """flows/ and tasks/ live at the repository root, beside src/."""
    if (ROOT / "flows").is_dir() and str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def load(ref: str):
    """The object a "module:name" reference names (a flow or a config class), imported only now."""
    module, name = ref.split(":")
    ensure_repo_on_path()
    return getattr(importlib.import_module(module), name)
