"""difflab: diffusion models trained, sampled and edited as Prefect flows, tracked in MLflow.

The library under this package is plain PyTorch; only `tracking` and `cli` touch MLflow/Prefect.
"""

__version__ = "0.1.0"
