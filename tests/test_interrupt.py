"""Ctrl-C on a real `difflab part-b --profile tiny`: one line naming the stage and epoch, exit 130, the runs
KILLED in MLflow and CANCELLED in Prefect, the checkpoint intact; the same command then resumes from it."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

EPOCHS = 15
ARGS = ["part-b", "--profile", "tiny", "--set", "data.max_train=128", "--set", f"time_ddpm.epochs={EPOCHS}",
        "--set", f"time_ddpm.snapshot_epochs=[1,{EPOCHS}]", "--set", "tracking.register_models=false",
        "--set", "evaluation.enabled=false"]


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONUNBUFFERED": "1"}


def _time_ddpm_epoch(root: Path) -> int:
    """Epochs done by the time_ddpm training (its checkpoint folder is the one that gets past 2 epochs)."""
    best = 0
    for last in root.glob(".difflab/checkpoints/*/last.pt"):
        try:
            best = max(best, torch.load(last, weights_only=False, map_location="cpu")["epoch"])
        except Exception:  # noqa: BLE001 - being replaced this instant
            pass
    return best


def _sigint_default():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a child of a background job would inherit SIG_IGN


def test_ctrl_c_stops_in_one_line_marks_runs_killed_and_the_rerun_resumes(tmp_path):
    cmd = [sys.executable, "-m", "difflab.cli", *ARGS]
    err = open(tmp_path / "stderr.log", "w+")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=err,
                            preexec_fn=_sigint_default)
    deadline = time.monotonic() + 300
    while _time_ddpm_epoch(tmp_path) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    err.seek(0)
    stderr = err.read()
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    last = [line for line in stderr.splitlines() if line.startswith("difflab:")][-1]  # Prefect logs after it
    m = re.fullmatch(rf"difflab: interrupted at time_ddpm epoch (\d+)/{EPOCHS}; rerun the same command to resume "
                     r"from it", last)
    assert m, stderr[-2000:]
    done = _time_ddpm_epoch(tmp_path)  # the checkpoint is intact: it loads, and holds the epochs done
    assert 3 <= done < EPOCHS and int(m.group(1)) in (done, done + 1)

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("difflab")
    status = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert status["time_ddpm"].info.status == "KILLED" and status["part_b-tiny"].info.status == "KILLED"
    assert status["denoiser"].info.status == "FINISHED"  # nothing already recorded lost
    assert "interrupted (Ctrl-C) at time_ddpm" in status["time_ddpm"].data.tags["difflab.error"]
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        assert [s for (s,) in db.execute("select state_type from flow_run")] == ["CANCELLED"]

    again = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    finished = [r for r in client.search_runs([exp.experiment_id], "attributes.run_name = 'time_ddpm'")
                if r.info.status == "FINISHED"]
    assert len(finished) == 1 and int(finished[0].data.tags["resumed_from_epoch"]) >= done - 1
