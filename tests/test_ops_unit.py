"""Fast checks of the operations pieces: prefect.yaml, the stack's process handling, the sweep's grid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ops import stack as stackmod

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- prefect.yaml


def _declared() -> list[dict]:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def test_prefect_yaml_schedules_every_flow_with_valid_cron():
    from prefect.client.schemas.schedules import CronSchedule

    by_flow: dict[str, list[dict]] = {}
    for d in _declared():
        by_flow.setdefault(d["entrypoint"], []).append(d)
        assert d["work_pool"]["name"] == "difflab"
        assert set(d.get("parameters", {})) <= {"config"}, d["name"]
        for s in d.get("schedules") or []:
            CronSchedule(cron=s["cron"], timezone=s["timezone"])  # raises on a bad cron or zone
    for entrypoint in ("flows/part_b.py:part_b", "flows/part_a.py:part_a", "flows/pipeline.py:pipeline",
                       "flows/compare.py:compare", "flows/sweep.py:sweep"):
        assert entrypoint in by_flow, f"no deployment of {entrypoint}"
    for entrypoint in ("flows/part_b.py:part_b", "flows/part_a.py:part_a", "flows/pipeline.py:pipeline",
                       "flows/compare.py:compare"):
        active = [s for d in by_flow[entrypoint] for s in d.get("schedules") or [] if s.get("active", True)]
        assert active, f"{entrypoint} has no active cron schedule"
    names = {d["name"] for d in by_flow["flows/part_b.py:part_b"]}
    assert {"tiny", "nightly-quick", "weekly-course"} <= names


def test_prefect_yaml_parameters_validate_against_the_flows_configs():
    from difflab import config as cfg
    from flows.sweep import SweepConfig

    models = {"part_b": cfg.PartBConfig, "sweep": SweepConfig}
    for flow, name in (("part_a", "PartAConfig"), ("pipeline", "PipelineConfig"), ("compare", "CompareConfig")):
        if hasattr(cfg, name):
            models[flow] = getattr(cfg, name)
    for d in _declared():
        flow = d["entrypoint"].rsplit(":", 1)[1]
        if flow in models:
            models[flow].model_validate(d["parameters"]["config"])


def test_pull_step_resolves_per_worker():
    data = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert data["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $DIFFLAB_ROOT }}"}}]


# --------------------------------------------------------------------------- sweep grid


def test_sweep_grid_expands_to_config_overrides():
    from flows.sweep import WIDTH, expand_grid, point_label, point_overrides

    points = expand_grid({"class_ddpm.guidance": [1.0, 5.0], "seed": [0, 1, 2], WIDTH: [8]})
    assert len(points) == 6
    assert points[0] == {"class_ddpm.guidance": 1.0, "seed": 0, WIDTH: 8}
    assert point_overrides(points[-1]) == {"class_ddpm": {"guidance": 5.0, "hidden": 8}, "seed": 2,
                                           "denoiser": {"hidden": 8}, "time_ddpm": {"hidden": 8}}
    assert point_label(points[-1]) == "class_ddpm.guidance=5.0,seed=2,D=8"


def test_sweep_recognises_a_part_b_run_by_its_params():
    from flows.sweep import WIDTH, _expected_params

    cfg = {"profile": "tiny", "seed": 3, "class_ddpm": {"guidance": 2}, "denoiser": {"hidden": 8},
           "time_ddpm": {"hidden": 8}}
    expected = _expected_params({**cfg, "class_ddpm": {"guidance": 2, "hidden": 8}},
                                {"seed": 3, "class_ddpm.guidance": 2, WIDTH: 8})
    assert expected == {"seed": "3", "class_ddpm.guidance": "2.0", "denoiser.hidden": "8",
                        "time_ddpm.hidden": "8", "class_ddpm.hidden": "8"}


def test_sweep_config_rejects_empty_grid_values():
    from flows.sweep import SweepConfig

    with pytest.raises(ValueError):
        SweepConfig(grid={"seed": []})
    with pytest.raises(ValueError):
        SweepConfig(unknown=1)


# --------------------------------------------------------------------------- stack processes


def _spawn(env_token: str | None, new_session: bool = True) -> subprocess.Popen:
    env = dict(os.environ)
    if env_token:
        env["DIFFLAB_STACK_ID"] = env_token
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], env=env,
                            start_new_session=new_session)


def test_stop_ends_recorded_groups_and_processes_carrying_the_id(tmp_path):
    st = stackmod.Stack(tmp_path)
    st.state = {"id": "unit-test-token-1", "services": []}
    recorded = st.start("sleeper", [sys.executable, "-c",
                                     # a child in the group, and a grandchild that escapes into its own session
                                     "import subprocess, sys, time\n"
                                     "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
                                     "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
                                     " start_new_session=True)\n"
                                     "time.sleep(120)"],
                        {**os.environ, "DIFFLAB_STACK_ID": "unit-test-token-1"}, tmp_path)
    bystander = _spawn(None)
    try:
        assert stackmod._wait_until(lambda: len(stackmod._pids_with_env("unit-test-token-1")) == 3, 20)
        assert stackmod.Stack(tmp_path).live_services()[0]["pid"] == recorded.pid
        stackmod.Stack(tmp_path).stop(timeout=10, out=lambda _: None)  # a fresh object: state read from disk
        recorded.wait(timeout=10)
        assert stackmod._wait_until(lambda: not stackmod._pids_with_env("unit-test-token-1"), 10)
        assert bystander.poll() is None, "stop must not touch processes it did not start"
        assert not (tmp_path / stackmod.STATE_FILE).exists()
    finally:
        for pid in stackmod._pids_with_env("unit-test-token-1"):
            os.kill(pid, signal.SIGKILL)
        bystander.kill()
        bystander.wait()


def test_a_recycled_pid_is_not_signalled(tmp_path):
    other = _spawn(None)
    try:
        st = stackmod.Stack(tmp_path)
        st.state = {"id": "unit-test-token-2", "services": [
            {"name": "ghost", "pid": other.pid, "pgid": other.pid, "start_time": "1", "cmd": [], "log": ""}]}
        st.save()
        assert not stackmod.Stack(tmp_path).live_services()
        stackmod.Stack(tmp_path).stop(timeout=2, out=lambda _: None)
        time.sleep(0.2)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_cli_status_and_down_without_a_stack(tmp_path):
    env = {**os.environ, "DIFFLAB_STACK_DIR": str(tmp_path / "none")}
    for args, rc in ((["status"], 3), (["down"], 0)):
        res = subprocess.run([sys.executable, "-m", "ops.stack", *args], env=env, capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == rc, res.stdout + res.stderr
        assert "no stack" in res.stdout


def test_up_refuses_a_busy_port_and_leaves_nothing_behind(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc = stackmod.main(["--state-dir", str(tmp_path), "up", "--prefect-port", str(port),
                            "--mlflow-port", str(stackmod.free_port()), "--no-deploy"])
    assert rc == 2
    assert not stackmod.Stack(tmp_path).live_services()


def test_a_component_that_fails_to_start_stops_the_rest(tmp_path, capsys):
    """MLflow exits on a backend store it cannot open; the Prefect server already started must go too."""
    env_before = dict(os.environ)
    os.environ["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    try:
        rc = stackmod.main(["--state-dir", str(tmp_path / "st"), "up", "--prefect-port", str(stackmod.free_port()),
                            "--mlflow-port", str(stackmod.free_port()), "--backend-store-uri", "nosuchdb://x",
                            "--no-deploy", "--timeout", "120"])
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    err = capsys.readouterr().err
    assert rc == 2 and "mlflow exited" in err, err
    assert not (tmp_path / "st" / stackmod.STATE_FILE).exists()
    logs = (tmp_path / "st" / "logs" / "prefect.log").read_text()
    assert "prefect server start" in logs


def test_redact_hides_database_passwords():
    assert stackmod._redact("postgresql://mlflow:s3cret@db:5432/mlflow") == "postgresql://mlflow:***@db:5432/mlflow"
    assert stackmod._redact("sqlite:///x.db") == "sqlite:///x.db"
