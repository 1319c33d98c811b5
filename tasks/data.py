"""Prefect task: get MNIST from the best available source and write it to one file."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from difflab.config import DataConfig
from difflab.data import load_mnist
from tasks.refs import DataRef
from tasks.retry import retry_if_transient


@task(name="download-data", retries=2, retry_delay_seconds=5,
      retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def prepare_data(cfg: DataConfig) -> DataRef:
    data = load_mnist(cfg)
    path = data.save(Path(cfg.root) / "prepared" / f"{data.source}-{data.checksum}.pt")
    get_run_logger().info("MNIST from %s: %d train / %d test images, checksum %s", data.source,
                          len(data.train_labels), len(data.test_labels), data.checksum)
    return DataRef(path=str(path), source=data.source, checksum=data.checksum, n_train=len(data.train_labels),
                   n_test=len(data.test_labels), detail=data.detail)
