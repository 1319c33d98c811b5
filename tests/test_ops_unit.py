"""Fast checks of the operations pieces: prefect.yaml, the stack's process handling, the sweep's grid."""

from __future__ import annotations

import os
import shutil
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
        assert d["work_pool"]["name"] in ("difflab", "difflab-docker")
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
    from difflab.config import SweepConfig

    models = {"part_b": cfg.PartBConfig, "sweep": SweepConfig}
    for flow, name in (("part_a", "PartAConfig"), ("pipeline", "PipelineConfig"), ("compare", "CompareConfig")):
        if hasattr(cfg, name):
            models[flow] = getattr(cfg, name)
    for d in _declared():
        flow = d["entrypoint"].rsplit(":", 1)[1]
        if flow in models:
            models[flow].model_validate(d["parameters"]["config"])


def test_prefect_yaml_entrypoints_name_flows_and_its_stage_lists_name_every_stage():
    """prefect.yaml is static YAML: it fails here when an entrypoint names no flow (a renamed flow function,
    a per-stage flow of a stage that is gone) or a grid key that sets every stage's width misses a stage."""
    from prefect.flows import load_flow_from_entrypoint

    from difflab import names

    stage_runs = set(names.PART_B_STAGES.values())
    for d in _declared():
        flow = load_flow_from_entrypoint(str(ROOT / d["entrypoint"]), use_placeholder_flow=False)
        func = d["entrypoint"].rsplit(":", 1)[1]
        if func.startswith("train_"):  # a per-stage flow: names.stage_flow(<run>)_flow
            assert flow.name in {names.stage_flow(r) for r in stage_runs}, d["name"]
        for key in ((d.get("parameters") or {}).get("config") or {}).get("grid") or {}:
            sections = [path.split(".")[0] for path in key.split(",")]
            if len(sections) > 1 and set(sections) & stage_runs:  # a value for several stages at once
                assert set(sections) == stage_runs, f"{d['name']}: grid key {key} misses a stage"


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
    from difflab.config import SweepConfig

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


def test_down_stops_workers_and_flow_runs_before_the_servers(tmp_path):
    """The run doctor runs between the two: flow runs already dead, servers still answering."""
    st = stackmod.Stack(tmp_path)
    st.state = {"id": "unit-test-token-3", "services": []}
    env = {**os.environ, "DIFFLAB_STACK_ID": "unit-test-token-3"}
    sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
    server = st.start("mlflow", sleep, env, tmp_path)
    worker = st.start("worker-1", sleep, env, tmp_path)
    flow_run = _spawn("unit-test-token-3")  # a flow run a worker started in a session of its own
    seen = {}

    def between():
        seen["worker"] = stackmod._alive(worker.pid)
        seen["flow_run"] = stackmod._alive(flow_run.pid)
        seen["server"] = stackmod._alive(server.pid)

    try:
        stackmod.Stack(tmp_path).stop(timeout=10, out=lambda _: None, between=between)
        assert seen == {"worker": False, "flow_run": False, "server": True}
        server.wait(timeout=10)
    finally:
        for p in (server, worker, flow_run):
            p.kill()
            p.wait()


# --------------------------------------------------------------------------- project folder, env, workers


def test_stack_is_rooted_at_the_project_folder_not_the_installed_package(tmp_path, monkeypatch):
    project = tmp_path / "checkout"
    (project / "flows" / "deep").mkdir(parents=True)
    (project / "prefect.yaml").write_text("deployments: []\n")
    monkeypatch.delenv("DIFFLAB_PROJECT_DIR", raising=False)
    assert stackmod.find_project_dir(start=project / "flows" / "deep") == project.resolve()
    assert stackmod.find_project_dir(project) == project.resolve()
    with pytest.raises(stackmod.StackError, match="--project-dir"):
        stackmod.find_project_dir(start=tmp_path)
    s = stackmod.Settings(state_dir=tmp_path / "st", project_dir=project).resolved()
    env = stackmod.base_env("id", s)
    assert env["DIFFLAB_ROOT"] == str(project)
    assert env["PYTHONPATH"].split(os.pathsep)[:2] == [str(project / "src"), str(project)]
    assert stackmod.default_state_dir(project) == (project / ".stack").resolve() or "DIFFLAB_STACK_DIR" in os.environ
    st = stackmod.Stack(tmp_path / "st")
    st.state = {"root": str(project), "pool": "difflab", "prefect_api_url": "http://x/api", "tracking_uri": "http://y",
                "workers_only": False, "services": []}
    assert f"project dir     {project}" in stackmod.describe(st)


def test_workers_only_honours_the_standard_variables_of_stack_env(tmp_path, monkeypatch, capsys):
    dead = f"http://127.0.0.1:{stackmod.free_port()}"
    for name in ("DIFFLAB_PREFECT_API_URL", "DIFFLAB_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PREFECT_API_URL", dead + "/api")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    rc = stackmod.main(["--state-dir", str(tmp_path), "up", "--workers-only"])
    err = capsys.readouterr().err
    assert rc == 2 and f"no Prefect server answers at {dead}/api" in err, err


def test_status_names_offline_workers_apart_from_online_ones(tmp_path, monkeypatch):
    workers = [{"name": "box-a-w1", "status": "ONLINE"}, {"name": "box-b-w1", "status": "OFFLINE"}]
    from ops import services, supervision

    monkeypatch.setattr(supervision, "http_json", lambda method, url, body=None, timeout=10.0: workers)
    monkeypatch.setattr(services, "prefect_healthy", lambda api: True)
    monkeypatch.setattr(services, "mlflow_healthy", lambda uri: True)
    st = stackmod.Stack(tmp_path)
    st.state = {"root": str(ROOT), "pool": "difflab", "prefect_api_url": "http://x/api", "tracking_uri": "http://y",
                "workers_only": False, "services": []}
    lines: list[str] = []
    assert stackmod.status(st, out=lines.append) == 0
    text = "\n".join(lines)
    assert "workers online  box-a-w1\n" in text + "\n"
    assert "workers offline box-b-w1" in text
    assert stackmod.worker_names("http://x/api", "difflab") == ["box-a-w1"]


def test_prefect_database_url_gets_the_async_driver():
    assert stackmod.prefect_database_url("postgresql://p:pw@db:5432/prefect") == \
        "postgresql+asyncpg://p:pw@db:5432/prefect"
    assert stackmod.prefect_database_url("postgresql+asyncpg://x@h/p") == "postgresql+asyncpg://x@h/p"


# --------------------------------------------------------------------------- the run doctor

VICTIM = r"""
import sys, time
from difflab import tracking
tracking.configure()
with tracking.run("victim", "difflab", tags={"flow": "part_b"}) as rid:
    print(rid, flush=True)
    time.sleep(120)
"""


def _killed_run() -> str:
    """A run opened by a process that is then SIGKILLed: it stays RUNNING in MLflow."""
    proc = subprocess.Popen([sys.executable, "-c", VICTIM], stdout=subprocess.PIPE, text=True)
    try:
        run_id = proc.stdout.readline().strip()
    finally:
        proc.kill()
        proc.wait()
    assert run_id, "the victim process did not open a run"
    return run_id


def test_a_killed_run_is_failed_when_the_next_flow_run_starts(mlflow_store):
    import flows  # noqa: F401 - registers the run doctor (ops/runs.py) as the run-start hook
    from difflab import tracking
    from ops.runs import find_dead_runs

    victim = _killed_run()
    assert tracking.get_run(victim).info.status == "RUNNING"
    tags = tracking.get_run(victim).data.tags
    assert tags[tracking.HOST_TAG] and tags[tracking.PID_TAG].isdigit() and tags[tracking.PID_START_TAG]
    with tracking.run("next", "difflab") as alive_run:  # a new flow run: the doctor runs first
        run = tracking.get_run(victim)
        assert run.info.status == "FAILED"
        assert "is gone" in run.data.tags[tracking.ERROR_TAG]
        assert find_dead_runs() == []  # this live process's own run is not touched
    assert tracking.get_run(alive_run).info.status == "FINISHED"


def test_the_flow_start_doctor_crashes_flow_runs_through_the_hook_the_flows_register(mlflow_store, monkeypatch):
    """The library runs the doctor (and so crashes Prefect flow runs) only through `tracking.set_run_start_hook`;
    the flows package hands it ops/runs.py's one implementation, which crashes through `crash_flow_runs`."""
    from mlflow.tracking import MlflowClient

    import flows  # noqa: F401 - registers the hook
    import ops.runs
    from difflab import tracking
    from difflab.tracking import runs as tracking_runs

    assert tracking_runs._run_start_hook is ops.runs.reap_quietly
    seen: dict[str, str] = {}
    monkeypatch.setattr(ops.runs, "crash_flow_runs", lambda reasons: seen.update(reasons) or list(reasons))
    victim = _killed_run()
    MlflowClient().set_tag(victim, tracking.PREFECT_FLOW_RUN_TAG, "flow-run-1")
    dead = ops.runs.reap_dead_runs()
    assert list(seen) == ["flow-run-1"] and "is gone" in seen["flow-run-1"]
    assert [(d["run_id"], d["flow_run_crashed"]) for d in dead] == [(victim, True)]


def test_the_run_start_hook_runs_once_per_new_top_level_run_and_never_fails_it(mlflow_store, monkeypatch):
    """Only a new top-level run calls the hook (not a nested one, not a resumed one); a hook that raises is
    housekeeping that failed, not the run."""
    from difflab import tracking
    from difflab.tracking import runs as tracking_runs

    calls: list[str] = []

    def broken_doctor(experiment: str) -> None:
        calls.append(experiment)
        raise RuntimeError("the doctor fell over")

    monkeypatch.setattr(tracking_runs, "_run_start_hook", broken_doctor)
    with tracking.run("top", "difflab") as top:
        with tracking.run("child", "difflab", parent_run_id=top):
            pass
    with tracking.run("top", "difflab", run_id=top):
        pass
    assert calls == ["difflab"]
    assert tracking.get_run(top).info.status == "FINISHED"


def test_other_hosts_runs_are_left_alone_unless_stale(mlflow_store):
    from mlflow.tracking import MlflowClient

    from difflab import tracking
    from ops.runs import find_dead_runs

    tracking.configure()
    exp = tracking.experiment_id("difflab")
    other = MlflowClient().create_run(exp, run_name="elsewhere", tags={
        tracking.HOST_TAG: "another-machine", tracking.PID_TAG: "1", tracking.PID_START_TAG: "1"}).info.run_id
    assert find_dead_runs() == []
    found = find_dead_runs(stale_hours=0.0)
    assert [d["run_id"] for d in found] == [other] and "another-machine" in found[0]["reason"]


def test_runs_doctor_crashes_the_prefect_flow_runs_of_dead_processes(prefect_harness, mlflow_store, capsys):
    """Through the CLI: the MLflow run FAILED, its linked flow run and a worker's dead flow run CRASHED."""
    from mlflow.tracking import MlflowClient
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect.states import Running

    from difflab import tracking
    from difflab.cli import main
    from difflab.procs import hostname

    @flow
    def placeholder():
        pass

    gone = subprocess.Popen(["true"])
    gone.wait()
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(placeholder)
        runs = [client.create_flow_run(placeholder, state=Running()) for _ in range(2)]
        client.update_flow_run(runs[1].id, infrastructure_pid=f"{hostname()}:{gone.pid}")
    victim = _killed_run()
    MlflowClient().set_tag(victim, tracking.PREFECT_FLOW_RUN_TAG, str(runs[0].id))
    assert flow_id
    api = PREFECT_API_URL.value()
    assert main(["runs", "doctor", "--prefect-api-url", api]) == 0
    out = capsys.readouterr().out
    assert tracking.get_run(victim).info.status == "FAILED", out
    with get_client(sync_client=True) as client:
        states = [client.read_flow_run(r.id).state for r in runs]
    assert [s.type.value for s in states] == ["CRASHED", "CRASHED"], out
    assert "is gone" in states[0].message and str(gone.pid) in states[1].message


# --------------------------------------------------------------------------- containers


def _compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_dockerfile_installs_the_way_the_readme_does():
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines() if ln.strip()
             and not ln.lstrip().startswith("#")]
    runs = [ln for ln in lines if ln.startswith("RUN ")]
    installs = [ln for ln in runs if "pip" in ln or "make" in ln.split()[1:2]]
    assert installs == ["RUN make dev"], installs  # the Makefile's target, not a copy of its pip line
    makefile = (ROOT / "Makefile").read_text()
    assert "\ndev: $(BIN)/python\n\t$(BIN)/pip install -q -e '.[dev]'" in makefile
    docs = (ROOT / "README.md").read_text() + (ROOT / "docs" / "operations.md").read_text()
    assert "make dev" in docs
    extras = (ROOT / "pyproject.toml").read_text()
    for driver in ("psycopg", "asyncpg", "boto3"):  # compose's PostgreSQL (MLflow, Prefect) and MinIO
        assert driver in extras
    assert "WORKDIR /app" in lines and "COPY . /app" in lines
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".stack", "mlruns"} <= set(ignored)


def test_compose_file_wires_the_services_together():
    compose = _compose()
    services = compose["services"]
    assert {"postgres", "minio", "minio-bucket", "mlflow", "prefect", "deploy", "worker"} <= set(services)
    for name, svc in services.items():
        assert svc.get("image"), f"{name} has no image"
        for dep in svc.get("depends_on") or {}:
            assert dep in services, f"{name} depends on unknown {dep}"
        for vol in svc.get("volumes") or []:
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).exists(), f"{name} mounts missing {src}"
            else:
                assert src in compose["volumes"], f"{name} uses undeclared volume {src}"
    ours = {n: s for n, s in services.items() if s["image"] == "difflab:latest"}
    assert set(ours) == {"mlflow", "prefect", "deploy", "worker"} and all(s["build"] == "." for s in ours.values())
    for name, svc in ours.items():  # each command is a console script the image's venv has
        assert Path(stackmod._bin(svc["command"][0])).name == svc["command"][0], name
    init_sql = (ROOT / "docker" / "postgres-init.sql").read_text()
    pg_env = services["postgres"]["environment"]
    prefect_db = services["prefect"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect_db.startswith("postgresql+asyncpg://") and prefect_db.rsplit("/", 1)[1] in init_sql
    ml_cmd = services["mlflow"]["command"]
    store = ml_cmd[ml_cmd.index("--backend-store-uri") + 1]
    assert store.startswith("postgresql://") and store.rsplit("/", 1)[1] == pg_env["POSTGRES_DB"]
    bucket = ml_cmd[ml_cmd.index("--artifacts-destination") + 1].removeprefix("s3://").split("/")[0]
    assert f"local/{bucket}" in services["minio-bucket"]["command"][0]
    # the deploy step's command parses with the stack's own parser; the worker draws from prefect.yaml's pool
    args = stackmod.build_parser().parse_args(services["deploy"]["command"][2:])
    assert args.command == "serve" and args.prefect_api_url == services["worker"]["environment"]["PREFECT_API_URL"]
    worker = services["worker"]["command"]
    assert worker[worker.index("--pool") + 1] == "difflab"
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        res = subprocess.run(["docker", "compose", "-f", str(ROOT / "compose.yaml"), "config", "-q"],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr


def test_docker_work_pool_variant_runs_the_image_on_the_compose_network():
    compose = _compose()
    [variant] = [d for d in _declared() if d["work_pool"]["name"] == "difflab-docker"]
    jobs = variant["work_pool"]["job_variables"]
    assert jobs["image"] == compose["services"]["worker"]["image"]
    assert f"{compose['name']}_default" in jobs["networks"]
    assert variant["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == "/app"
    assert jobs["env"]["MLFLOW_TRACKING_URI"] == compose["services"]["worker"]["environment"]["MLFLOW_TRACKING_URI"]


def test_serve_registers_only_the_stacks_pool_unless_named(tmp_path, monkeypatch):
    from ops import services

    calls = []
    monkeypatch.setattr(services, "_run_cli", lambda cmd, env, timeout, cwd=None: calls.append(cmd) or
                        subprocess.CompletedProcess(cmd, 0, "", ""))
    monkeypatch.setattr(services, "_bin", lambda name: name)
    s = stackmod.Settings(state_dir=tmp_path, project_dir=ROOT).resolved()
    lines: list[str] = []
    labels = stackmod.deploy(s, {}, out=lines.append)
    assert "part_b/tiny" in labels and "part_b/tiny-docker" not in labels
    assert any("tiny-docker" in ln and "difflab-docker" in ln for ln in lines)
    assert stackmod.deploy(s, {}, names=["part_b/tiny-docker"], out=lines.append) == ["part_b/tiny-docker"]
