"""What tasks hand each other: paths, run ids and configs — never tensors or models."""

from __future__ import annotations

from pydantic import BaseModel


class DataRef(BaseModel):
    path: str
    """A prepared-data file written by `MnistData.save`."""
    source: str
    checksum: str
    n_train: int
    n_test: int
    detail: str = ""


class StageRef(BaseModel):
    stage: str
    run_id: str
    """The MLflow run that holds the stage's artifacts (the original one when reused)."""
    checkpoint: str
    """A local copy of the final checkpoint (checkpoints/final.pt in that run)."""
    metrics: dict[str, float] = {}
    reused: bool = False
    model_id: str | None = None
    """The final checkpoint's MLflow logged model (the registered pyfunc); the evaluation links its metrics to it."""
