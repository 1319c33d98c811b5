"""Issue 8, item 2: two identical runs started together in a new folder both succeed; one trains each stage,
the other waits for it and reuses its run; neither resumes from the other's live checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from difflab.locks import file_lock

ROOT = Path(__file__).resolve().parents[1]


def test_file_lock_makes_the_second_holder_wait(tmp_path):
    order, waited = [], []

    def second():
        with file_lock(tmp_path / "x.lock", poll_s=0.05, on_wait=waited.append) as had_to_wait:
            order.append(("second", had_to_wait))

    with file_lock(tmp_path / "x.lock"):
        t = threading.Thread(target=second)
        t.start()
        while not waited:
            time.sleep(0.01)
        order.append(("first", False))
    t.join()
    assert order == [("first", False), ("second", True)] and waited == [f"pid {os.getpid()}"]


def test_two_runs_started_together_in_a_new_folder(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
           "PREFECT_HOME": str(tmp_path / "prefect-home")}  # a new user's Prefect database too
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "difflab.cli", "part-b", "--profile", "tiny", "--set", 'stages=["denoiser","time"]',
           "--set", "evaluation.enabled=false", "--set", "data.max_train=128"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["difflab"])
    assert set(runs.status) == {"FINISHED"}
    names = list(runs["tags.mlflow.runName"])
    for stage in ("denoiser", "time_ddpm"):
        assert names.count(stage) == 1 and names.count(f"{stage} (reused)") == 1, names  # trained once
    if "tags.resumed_from_epoch" in runs:
        assert runs["tags.resumed_from_epoch"].isna().all()  # nobody resumed a live checkpoint
    assert len(MlflowClient().search_model_versions("name = 'difflab-denoiser'")) == 1
