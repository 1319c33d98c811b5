"""Prefect task: get MNIST from the best available source, write it to one file, and record it in the run."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from difflab import tracking
from difflab.config import DataConfig
from difflab.data import load_mnist
from tasks.refs import DataRef
from tasks.retry import retry_if_transient


@task(name="download-data", retries=2, retry_delay_seconds=5,
      retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def prepare_data(cfg: DataConfig, run_id: str) -> DataRef:
    """Load the data and log its source, counts and checksum (params, tags, MLflow datasets) to run_id."""
    data = load_mnist(cfg)
    path = data.save(Path(cfg.root) / "prepared" / f"{data.source}-{data.checksum}.pt")
    ref = DataRef(path=str(path), source=data.source, checksum=data.checksum, n_train=len(data.train_labels),
                  n_test=len(data.test_labels), detail=data.detail)
    tracking.log_params({"data.source_used": ref.source, "data.n_train": ref.n_train, "data.n_test": ref.n_test,
                         "data.checksum": ref.checksum}, run_id)
    tracking.log_tags({"data_source": ref.source, "data_checksum": ref.checksum}, run_id)
    for split, images, labels in (("training", data.train_images, data.train_labels),
                                  ("evaluation", data.test_images, data.test_labels)):
        tracking.log_dataset(images.numpy(), labels.numpy(), f"mnist-{ref.source}-{split}", ref.checksum,
                             ref.detail or ref.source, split, run_id)
    get_run_logger().info("MNIST from %s: %d train / %d test images, checksum %s", ref.source, ref.n_train,
                          ref.n_test, ref.checksum)
    return ref
