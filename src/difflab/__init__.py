"""difflab: diffusion models trained, sampled and edited as Prefect flows, tracked in MLflow.

The library under this package is plain PyTorch; only `tracking` and `cli` touch MLflow/Prefect.
"""

import os

# OpenMP threads that spin without bound collapse when the cores are shared (a Prefect server, a
# worker, a second job): one D=16 training step on 2 busy cores ran at 30 img/s by default and at
# 537 img/s with a bounded spin, which costs nothing on an idle machine (675 vs 666 img/s).
# Must be set before torch loads OpenMP, which is why it lives here.
os.environ.setdefault("GOMP_SPINCOUNT", "100000")

__version__ = "0.1.0"
