"""Prefect flows: they chain tasks and decide what runs; each flow run opens one top-level MLflow run.

A new top-level run first ends the runs whose process died (`tracking`'s run doctor); the Prefect
flow runs those named are set CRASHED by the one implementation in ops/runs.py, handed to the
library here as a hook, so that `difflab` itself never imports ops.
"""

from difflab import tracking
from ops.runs import crash_flow_runs

tracking.set_flow_run_crasher(crash_flow_runs)
