"""Prefect flows: they chain tasks and decide what runs; each flow run opens one top-level MLflow run.

A new top-level run first ends the runs whose process died: the run doctor (ops/runs.py, which also
sets the Prefect flow runs those named CRASHED) is handed to the library here as a hook, so that
`difflab` itself never imports ops.
"""

from difflab import tracking
from ops.runs import reap_quietly

tracking.set_run_start_hook(reap_quietly)
