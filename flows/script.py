"""`python flows/<flow>.py ARGS` is `difflab <command> ARGS`, without the entry point.

The CLI is started in a fresh interpreter of this checkout (it replaces this process), so the flows
never import the CLI that imports them, and a flow module is not loaded twice (once as __main__,
once under its own name when the CLI looks it up).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]


def run_command(command: str, argv: Sequence[str] | None = None) -> int:
    """Run `difflab <command> argv` (default: this script's arguments); returns its exit status."""
    args = [sys.executable, "-m", "difflab.cli", command, *(sys.argv[1:] if argv is None else argv)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)] +
                                        [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        os.execve(sys.executable, args, env)  # signals (a worker's SIGTERM) reach the flow run directly
    return subprocess.call(args, env=env)
