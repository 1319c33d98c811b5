"""Where the operations stack lives and how it is configured: the project folder, the state folder,
the `Settings` of one stack (flags, else environment variables, else defaults; see ops/stack.py's
docstring for the variables) and the file names under the state folder.

Plain values only: no processes, no network (those are ops/supervision.py and ops/services.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from difflab import ENV_DEFAULTS

PROJECT_MARKER = "prefect.yaml"
"""A project folder is the nearest folder, from where the command runs upwards, that holds this file."""


def find_project_dir(explicit: str | Path | None = None, start: Path | None = None) -> Path:
    """The project the stack serves: --project-dir / $DIFFLAB_PROJECT_DIR, else the nearest folder
    from the current one upwards with a prefect.yaml. Never where the package is installed: a venv
    shared by two checkouts, or a non-editable install, must not decide whose code runs."""
    chosen = explicit or os.environ.get("DIFFLAB_PROJECT_DIR")
    if chosen:
        path = Path(chosen).expanduser().resolve()
        if not (path / PROJECT_MARKER).is_file():
            raise StackError(f"project dir {path} has no {PROJECT_MARKER}; give the folder of a difflab checkout")
        return path
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / PROJECT_MARKER).is_file():
            return folder
    raise StackError(f"no {PROJECT_MARKER} in {here} or above; run from a difflab checkout or pass --project-dir")

QUIET_ENV = {**ENV_DEFAULTS, "PYTHONUNBUFFERED": "1"}
"""What every process the stack starts gets: difflab's own switches, and logs that arrive as they happen."""

STATE_FILE = "state.json"
SERVER_NAMES = ("prefect", "mlflow")
"""Services stopped last, so that the run doctor can still reach them."""


class StackError(RuntimeError):
    pass

ENV_FILE = "env"


# --------------------------------------------------------------------------- settings


@dataclass
class Settings:
    state_dir: Path
    project_dir: Path = Path(".")
    """The checkout whose prefect.yaml is deployed and whose code the workers run."""
    host: str = "127.0.0.1"
    advertise_host: str = ""
    """The name other machines and browsers use for this one (default: the bind address, loopback for 0.0.0.0)."""
    prefect_port: int = 4200
    mlflow_port: int = 5000
    workers: int = 1
    pool: str = "difflab"
    """The process work pool; prefect.yaml's deployments name the same one."""
    backend_store_uri: str = ""
    artifacts_destination: str = ""
    workers_only: bool = False
    prefect_api_url: str = ""
    tracking_uri: str = ""
    deploy: bool = True
    startup_timeout: float = 180.0
    worker_poll_seconds: float = 5.0
    worker_limit: int = 0
    """Most flow runs one worker runs at once (0: no limit). A sweep's own run holds a slot while it waits."""
    mlflow_server_workers: int = 1
    prefect_scheduler: bool = True
    prefect_database_url: str = ""
    """Prefect server's own database: empty for SQLite under the state dir, or postgresql+asyncpg://..."""

    def resolved(self) -> "Settings":
        # The server's own store, not the ./mlflow.db of runs made without a server: an experiment the
        # server creates keeps `mlflow-artifacts:/` locations, which a client without the server cannot use.
        if not self.backend_store_uri:
            self.backend_store_uri = f"sqlite:///{self.state_dir / 'mlflow.db'}"
        if not self.artifacts_destination:
            self.artifacts_destination = str(self.state_dir / "mlartifacts")
        name = self.advertise_host or _url_host(self.host)
        if not self.prefect_api_url:
            self.prefect_api_url = f"http://{name}:{self.prefect_port}/api"
        if not self.tracking_uri:
            self.tracking_uri = f"http://{name}:{self.mlflow_port}"
        return self


def _url_host(host: str) -> str:
    """A host to dial: a wildcard bind address is reached on loopback."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _env(name: str, default: Any) -> Any:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return type(default)(value) if default is not None and not isinstance(default, str) else value


def default_state_dir(project_dir: Path) -> Path:
    return Path(os.environ.get("DIFFLAB_STACK_DIR") or project_dir / ".stack").resolve()


def prefect_database_url(url: str) -> str:
    """Prefect's server needs an async driver: postgresql://... becomes postgresql+asyncpg://..."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+asyncpg://" + url[len(plain):]
    return url



def _redact(uri: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db"""
    if "://" in uri and "@" in uri:
        scheme, rest = uri.split("://", 1)
        creds, hostpart = rest.rsplit("@", 1)
        if ":" in creds:
            creds = creds.split(":", 1)[0] + ":***"
        return f"{scheme}://{creds}@{hostpart}"
    return uri

