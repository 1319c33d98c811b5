"""difflab: diffusion models trained, sampled and edited as Prefect flows, tracked in MLflow.

The library under this package is plain PyTorch; only `tracking` and `cli` touch MLflow/Prefect.
"""

import os

ENV_DEFAULTS = {
    # Telemetry off: otherwise MLflow and Prefect print tracebacks about it and sqlite reports "database is locked".
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "GIT_PYTHON_REFRESH": "quiet",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # Spinning OpenMP threads collapse when the cores are shared (a Prefect server, a worker, a second
    # job). bench/cpu_training.py, D=16 training on 2 cores with both cores also busy: torch's default
    # fell to 21-175 img/s across runs, a bounded GOMP_SPINCOUNT was erratic (44-537), passive waiting
    # held 290-460; idle, passive costs 15-25%. Set before torch loads OpenMP, hence here.
    "OMP_WAIT_POLICY": "PASSIVE",
    # Prefect's temporary server gets this long to start: its default, 20 s, is too short on a loaded
    # machine (two runs started together in one folder timed out).
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}
"""Set (unless already set) when difflab is imported: the one place these switches live."""
for _key, _value in ENV_DEFAULTS.items():
    os.environ.setdefault(_key, _value)

__version__ = "0.1.0"
