"""A real training process killed mid-run (SIGKILL), then rerun: the rerun resumes from the last epoch
checkpoint, and its finished run carries what the killed one logged or points at it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

EPOCHS = 12
ARGS = ["train-time-ddpm", "--profile", "tiny", "--set", "data.max_train=128", "--set", f"time_ddpm.epochs={EPOCHS}",
        "--set", f"time_ddpm.snapshot_epochs=[1,{EPOCHS}]", "--set", "tracking.register_models=false"]


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONUNBUFFERED": "1"}


def _last_epoch(root: Path) -> int:
    for last in root.glob(".difflab/checkpoints/*/last.pt"):
        try:
            return torch.load(last, weights_only=False, map_location="cpu")["epoch"]
        except Exception:  # noqa: BLE001 - being replaced this instant
            return 0
    return 0


def test_a_killed_training_resumes_and_its_finished_run_points_at_the_killed_one(tmp_path):
    cmd = [sys.executable, "-m", "difflab.cli", *ARGS]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while _last_epoch(tmp_path) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _last_epoch(tmp_path)
    assert 2 <= killed_at < EPOCHS, "the training finished (or never started) before it could be killed"

    done = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("difflab")
    runs = {r.info.status: r for r in client.search_runs([exp.experiment_id], "attributes.run_name = 'time_ddpm'")}
    finished, killed = runs["FINISHED"], runs["FAILED"]  # the rerun's run doctor ended the killed one
    assert "is gone" in killed.data.tags["difflab.error"]
    resumed_from = int(finished.data.tags["resumed_from_epoch"])
    assert resumed_from >= killed_at - 1
    assert finished.data.tags["difflab.resumed_from_run"] == killed.info.run_id
    assert finished.data.params["train_seconds.covers"] == f"epochs {resumed_from + 1}-{EPOCHS}"
    steps_per_epoch = int(finished.data.params["plan.steps_per_epoch"])
    history = client.get_metric_history(finished.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(EPOCHS * steps_per_epoch))  # the killed epochs' losses too
    files = {a.path for a in client.list_artifacts(finished.info.run_id, "checkpoints")}
    assert {"checkpoints/epoch_0001.pt", f"checkpoints/epoch_{EPOCHS:04d}.pt", "checkpoints/final.pt"} <= files
