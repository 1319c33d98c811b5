"""End to end on loopback: the real Prefect server, two process workers and the MLflow server.

`python -m ops.stack up` starts them (sqlite backend, local artifact root, ports
picked free, PREFECT_HOME in a temp dir, scheduler off so no cron run can start) with
one worker, and registers the deployments of prefect.yaml; a second
`up --workers-only` adds a worker the way another machine would. The tests then
- check every registered deployment carries prefect.yaml's cron schedules;
- trigger `part_b/tiny` by name with the Prefect CLI, wait for it, and check through
  MLflow's REST API that the run, its params, metrics, images, checkpoint and model are there;
- trigger the sweep deployment over a two-point grid, and check that its runs ran in
  parallel on the pool, completed, were compared, and are tagged in MLflow.
The tiny run and the sweep are triggered together and run side by side. Teardown stops
the stack and checks that no process carrying its id is left, pass or fail.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.parse
from datetime import datetime
from pathlib import Path

import pytest
import yaml

import browser
from ops import stack as stackmod

ROOT = Path(__file__).resolve().parents[1]
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RUN_TIMEOUT_S = 300
SWEEP_PARAMS = {"config": {"base": {"profile": "tiny", "stages": ["denoiser"], "force": True},
                           "grid": {"seed": [1, 2]}, "poll_s": 1, "timeout_s": RUN_TIMEOUT_S}}


def ops_env(prefect_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_TRACKING", "DIFFLAB_STACK"))}
    env.update(stackmod.QUIET_ENV)
    env["PREFECT_HOME"] = str(prefect_home)
    return env


def prefect_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([stackmod._bin("prefect"), "--no-prompt", *args], env=env, cwd=str(ROOT),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def trigger(env: dict[str, str], deployment: str, params: dict | None = None) -> str:
    """`prefect deployment run <flow/deployment>`, as a person would; returns the flow run id."""
    args = ["deployment", "run", deployment]
    if params is not None:
        args += ["--params", json.dumps(params)]
    res = prefect_cli(env, *args)
    assert res.returncode == 0, f"prefect deployment run {deployment} failed:\n{res.stdout}\n{res.stderr}"
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", res.stdout)
    assert match, f"no flow run id in:\n{res.stdout}"
    return match.group(1)


def flow_run_logs(api: str, flow_run_id: str, limit: int = 60) -> str:
    try:
        logs = stackmod.http_json("POST", f"{api}/logs/filter", {
            "logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_DESC", "limit": limit})
    except Exception as exc:  # diagnostics only
        return f"(logs unavailable: {exc})"
    return "\n".join(f"{entry['timestamp']} {entry['message']}" for entry in reversed(logs))


def wait_flow_run(info: dict, flow_run_id: str, timeout: float = RUN_TIMEOUT_S) -> dict:
    api = info["api"]
    deadline = time.monotonic() + timeout
    while True:
        fr = stackmod.http_json("GET", f"{api}/flow_runs/{flow_run_id}")
        if fr["state_type"] in FINAL:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"flow run {fr['name']} still {fr['state_type']} after {timeout:.0f}s\n"
                        f"{flow_run_logs(api, flow_run_id)}\n{info['stack'].log_tail('worker-1')}")
        time.sleep(1.0)
    if fr["state_type"] != "COMPLETED":
        pytest.fail(f"flow run {fr['name']} ended {fr['state_type']}: {fr['state'].get('message')}\n"
                    f"--- flow run logs ---\n{flow_run_logs(api, flow_run_id)}\n"
                    f"--- worker-1 ---\n{info['stack'].log_tail('worker-1')}\n"
                    f"--- remote worker-1 ---\n{info['remote'].log_tail('worker-1')}")
    return fr


class MlflowRest:
    """MLflow's REST API, as any client in another language would use it."""

    def __init__(self, base: str):
        self.base = base.rstrip("/")
        self.api = self.base + "/api/2.0/mlflow"

    def get(self, endpoint: str, **query) -> dict:
        return stackmod.http_json("GET", f"{self.api}/{endpoint}?{urllib.parse.urlencode(query)}")

    def post(self, endpoint: str, body: dict) -> dict:
        return stackmod.http_json("POST", f"{self.api}/{endpoint}", body)

    def experiment_id(self, name: str) -> str:
        return self.get("experiments/get-by-name", experiment_name=name)["experiment"]["experiment_id"]

    def search_experiment(self, name: str) -> list[str]:
        """[its id] when the experiment exists, else []."""
        found = self.post("experiments/search", {"filter": f"name = '{name}'", "max_results": 1})
        return [e["experiment_id"] for e in found.get("experiments", [])]

    def search(self, experiment_id: str, filter_string: str = "") -> list[dict]:
        return self.post("runs/search", {"experiment_ids": [experiment_id], "filter": filter_string,
                                         "max_results": 1000}).get("runs", [])

    def artifacts(self, run_id: str, path: str = "") -> list[dict]:
        query = {"run_id": run_id, **({"path": path} if path else {})}
        return self.get("artifacts/list", **query).get("files", [])

    def artifact_bytes(self, run_id: str, path: str) -> bytes:
        url = f"{self.base}/get-artifact?{urllib.parse.urlencode({'path': path, 'run_uuid': run_id})}"
        status, body = stackmod.http_get(url, timeout=30)
        assert status == 200, f"GET {url}: {status}"
        return body


def run_tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def run_params(run: dict) -> dict[str, str]:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def run_metrics(run: dict) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def stack_up(state: Path, env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess, stackmod.Stack]:
    cmd = [sys.executable, "-m", "ops.stack", "--state-dir", str(state), "up", *args]
    res = subprocess.run(cmd, env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=360,
                         stdin=subprocess.DEVNULL)
    return res, stackmod.Stack(state)


@pytest.fixture(scope="module")
def ops_stack(tmp_path_factory):
    """The servers with one worker, and a second worker started as another machine would (--workers-only)."""
    state = tmp_path_factory.mktemp("stack")
    remote_state = tmp_path_factory.mktemp("remote-worker")
    env = ops_env(state / "prefect-home")
    ids = []
    try:
        res, st = stack_up(state, env, "--prefect-port", str(stackmod.free_port()),
                           "--mlflow-port", str(stackmod.free_port()), "--workers", "1",
                           "--backend-store-uri", f"sqlite:///{state / 'mlflow.db'}",
                           "--artifacts-destination", str(state / "artifacts"),
                           "--worker-poll-seconds", "1", "--no-scheduler", "--timeout", "150")
        ids.append(st.state.get("id"))
        assert res.returncode == 0, f"stack up failed:\n{res.stdout}\n{res.stderr}"
        api, tracking_uri = st.state["prefect_api_url"], st.state["tracking_uri"]
        res2, remote = stack_up(remote_state, env, "--workers-only", "--workers", "1",
                                "--prefect-api-url", api, "--tracking-uri", tracking_uri,
                                "--worker-poll-seconds", "1", "--timeout", "120")
        ids.append(remote.state.get("id"))
        assert res2.returncode == 0, f"workers-only up failed:\n{res2.stdout}\n{res2.stderr}"
        env["PREFECT_API_URL"] = api
        yield {"state": state, "env": env, "api": api, "mlflow": MlflowRest(tracking_uri),
               "stack": st, "remote": remote, "up_output": res.stdout}
    finally:
        for path in (remote_state, state):
            st = stackmod.Stack(path)
            ids.append(st.state.get("id"))
            st.stop(timeout=20, out=lambda _: None)
        left = {i: stackmod._pids_with_env(i) for i in set(ids) if i}
        assert not any(left.values()), f"processes of the stack still running after down: {left}"


@pytest.fixture(scope="module")
def triggered(ops_stack):
    """Trigger the tiny run and the sweep at once: they run side by side on the two workers."""
    env = ops_stack["env"]
    return {"tiny": trigger(env, "part_b/tiny"),
            "sweep": trigger(env, "sweep/guidance-seed-width", SWEEP_PARAMS)}


def test_stack_status_reports_healthy(ops_stack):
    res = subprocess.run([sys.executable, "-m", "ops.stack", "--state-dir", str(ops_stack["state"]), "status"],
                         env=ops_stack["env"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Prefect API     healthy" in res.stdout and "MLflow server   healthy" in res.stdout
    workers = stackmod.worker_names(ops_stack["api"], "difflab")
    assert len(workers) == 2, workers  # one from each `up`: several machines draw from one pool
    assert stackmod.status(ops_stack["remote"], out=lambda _: None) == 0


def test_scheduled_deployments_exist_with_their_cron(ops_stack):
    declared = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    registered = stackmod.http_json("POST", f"{ops_stack['api']}/deployments/filter", {})
    flows = {f["id"]: f["name"] for f in stackmod.http_json("POST", f"{ops_stack['api']}/flows/filter", {})}
    by_name = {f"{flows[d['flow_id']]}/{d['name']}": d for d in registered}

    expected = 0
    for d in declared:
        path, _, func = d["entrypoint"].partition(":")
        if not (ROOT / path).is_file() or d["work_pool"]["name"] != "difflab":
            continue  # the stack skips flows that do not exist yet and other pools' variants (and says so)
        expected += 1
        name = f"{func}/{d['name']}"
        assert name in by_name, f"{name} not registered; registered: {sorted(by_name)}"
        got = by_name[name]
        assert got["work_pool_name"] == "difflab"
        assert got["parameters"] == d.get("parameters", {})
        want = sorted((s["cron"], s.get("timezone"), s.get("active", True)) for s in d.get("schedules") or [])
        have = sorted((s["schedule"]["cron"], s["schedule"]["timezone"], s["active"]) for s in got["schedules"])
        assert have == want, f"{name}: schedules {have} != prefect.yaml's {want}"
        assert got["pull_steps"] == [{"prefect.deployments.steps.set_working_directory":
                                      {"directory": "{{ $DIFFLAB_ROOT }}"}}]
    assert expected >= 4  # part_b x3 and the sweep at least
    assert by_name["part_b/nightly-quick"]["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    assert by_name["part_b/weekly-course"]["schedules"][0]["schedule"]["cron"] == "0 3 * * 6"


def test_tiny_deployment_run_lands_in_mlflow(ops_stack, triggered):
    fr = wait_flow_run(ops_stack, triggered["tiny"])
    assert fr["parameters"] == {"config": {"profile": "tiny"}}

    ml = ops_stack["mlflow"]
    exp = ml.experiment_id("difflab")
    parents = [r for r in ml.search(exp, "tags.flow = 'part_b' and tags.profile = 'tiny'")
               if "mlflow.parentRunId" not in run_tags(r)]
    assert len(parents) == 1, [r["info"]["run_name"] for r in parents]
    parent = parents[0]
    pid = parent["info"]["run_id"]
    assert parent["info"]["status"] == "FINISHED"
    assert parent["info"]["artifact_uri"].startswith("mlflow-artifacts:/"), "artifacts must go through the server"

    params = run_params(parent)
    assert params["profile"] == "tiny" and params["seed"] == "0"
    metrics = run_metrics(parent)
    for key in ("denoiser.final_loss", "time_ddpm.final_loss", "class_ddpm.final_loss"):
        assert key in metrics and math.isfinite(metrics[key]) and metrics[key] > 0, (key, metrics)

    children = {run_tags(r).get("difflab.stage"): r for r in ml.search(exp, f"tags.`mlflow.parentRunId` = '{pid}'")}
    assert {"denoiser", "time_ddpm", "class_ddpm"} <= set(children), sorted(children)
    for stage in ("denoiser", "time_ddpm", "class_ddpm"):
        run = children[stage]
        rid = run["info"]["run_id"]
        assert run["info"]["status"] == "FINISHED"
        assert "train_loss" in run_metrics(run)
        checkpoints = [f["path"] for f in ml.artifacts(rid, "checkpoints")]
        assert "checkpoints/final.pt" in checkpoints, checkpoints
        images = [f["path"] for f in ml.artifacts(rid, "images") if f["path"].endswith(".png")]
        assert images, f"no images logged in {stage}"
        png = ml.artifact_bytes(rid, images[0])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        ckpt = ml.artifact_bytes(rid, "checkpoints/final.pt")
        assert len(ckpt) > 1000 and ckpt[:2] == b"PK"  # torch.save's zip format

    models = ml.post("logged-models/search", {"experiment_ids": [exp]}).get("models", [])
    sources = {m["info"].get("source_run_id") for m in models}
    assert sources & {r["info"]["run_id"] for r in children.values()}, "no model logged from the stage runs"


def test_sweep_fans_out_in_parallel_and_compares(ops_stack, triggered):
    api = ops_stack["api"]
    sweep_fr = wait_flow_run(ops_stack, triggered["sweep"])
    children = stackmod.http_json("POST", f"{api}/flow_runs/filter", {
        "flow_runs": {"parent_flow_run_id": {"any_": [sweep_fr["id"]]}}})
    # The sweep's child flow runs: part_b deployment runs tagged with the sweep.
    points = [c for c in children if "sweep" in c["tags"] and c["deployment_id"]]
    assert len(points) == 2, [c["name"] for c in children]
    assert all(c["state_type"] == "COMPLETED" for c in points), [(c["name"], c["state_type"]) for c in points]
    assert sorted(c["parameters"]["config"]["seed"] for c in points) == [1, 2]

    spans = [(datetime.fromisoformat(c["start_time"]), datetime.fromisoformat(c["end_time"])) for c in points]
    (a0, a1), (b0, b1) = spans
    assert a0 < b1 and b0 < a1, f"the sweep's runs did not overlap in time: {spans}"

    artifacts = stackmod.http_json("POST", f"{api}/artifacts/filter", {
        "artifacts": {"key": {"any_": ["sweep-results"]}, "flow_run_id": {"any_": [sweep_fr["id"]]}}})
    assert artifacts, "no sweep-results table artifact"
    rows = json.loads(artifacts[0]["data"]) if isinstance(artifacts[0]["data"], str) else artifacts[0]["data"]
    assert len(rows) == 2 and all(r["state"] == "Completed" and r["mlflow_run_id"] for r in rows), rows
    assert all(isinstance(r["denoiser.final_loss"], float) for r in rows), rows

    ml = ops_stack["mlflow"]
    exp = ml.experiment_id("difflab")
    sweep_id = rows[0]["flow_run"].split("-")[1]
    tagged = ml.search(exp, f"tags.`difflab.sweep` = '{sweep_id}'")
    point_runs = [r for r in tagged if "difflab.sweep_point" in run_tags(r)]
    assert sorted(r["info"]["run_id"] for r in point_runs) == sorted(r["mlflow_run_id"] for r in rows)
    sweep_runs = [r for r in tagged if run_tags(r).get("flow") == "sweep"]
    assert len(sweep_runs) == 1 and sweep_runs[0]["info"]["status"] == "FINISHED"
    assert all(run_tags(r)["mlflow.parentRunId"] == sweep_runs[0]["info"]["run_id"] for r in point_runs)
    assert sorted(run_params(r)["seed"] for r in point_runs) == ["1", "2"]
    files = [f["path"] for f in ml.artifacts(sweep_runs[0]["info"]["run_id"], "sweep")]
    assert "sweep/results.json" in files
    # ... and handed to the compare flow, whose report run names exactly the sweep's runs.
    compare_id = run_tags(sweep_runs[0]).get("difflab.compare_run_id")
    assert compare_id, "the sweep did not run the compare flow"
    compare_run = ml.get("runs/get", run_id=compare_id)["run"]
    assert sorted(run_tags(compare_run)["compared_runs"].split(",")) == sorted(r["mlflow_run_id"] for r in rows)


# ---- Prefect's run form, as a person uses it: Deployments -> part_b/tiny -> Run -> Custom run -> Submit ----

FORM_FIELD_JS = """(() => {
  const label = el => ((el.querySelector(':scope > .p-label__header .schema-form-property__label') || {}).innerText
                       || '').trim();
  const props = [...document.querySelectorAll('.schema-form-property')];
  const section = props.find(p => label(p).startsWith(%s));
  const field = section && [...section.querySelectorAll('.schema-form-property')].find(p => label(p).startsWith(%s));
  const input = field && field.querySelector(':scope > .p-label__body input');
  if (!input) return false;
  input.scrollIntoView({block: 'center'});
  input.focus();
  return document.activeElement === input;
})()"""
SUBMIT_JS = "[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Submit')"
FORM_SUBMIT_TRIES = 3
"""A sqlite Prefect server under load answers some writes 'database is locked' (the form then says 'Something
went wrong'); a person clicks Submit again, and so does the test."""


def submit_custom_run(page, ui: str, deployment_id: str, edits: dict[tuple[str, str], str], shot: Path) -> dict:
    """Open the deployment's Custom run form, type each (section, field) -> text, submit; returns the flow run
    the server created (its parameters are what the form sent)."""
    page.send("Network.enable")
    for _ in range(FORM_SUBMIT_TRIES):
        page.goto(f"{ui}/deployments/deployment/{deployment_id}/run")
        assert page.wait_for(f"!!{SUBMIT_JS}", timeout=90), "the Custom run form did not render"
        for (section, field), text in edits.items():
            assert page.evaluate(FORM_FIELD_JS % (json.dumps(section), json.dumps(field))), (section, field)
            page.send("Input.insertText", {"text": text})  # typed, as a person does
            page.evaluate("document.activeElement.blur()")
        page.pump(0.5)
        page.screenshot(shot, full_page=False)
        page.events.clear()
        page.evaluate(f"{SUBMIT_JS}.click()")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            page.pump(0.5)
            sent = {e["params"]["requestId"] for e in page.events if e["method"] == "Network.requestWillBeSent"
                    and e["params"]["request"]["url"].endswith("/create_flow_run")}
            done = [e["params"]["response"]["status"] for e in page.events if e["method"] == "Network.responseReceived"
                    and e["params"]["requestId"] in sent]
            if done:
                break
        if done and done[0] == 201:
            rid = next(iter(sent))
            return json.loads(page.send("Network.getResponseBody", {"requestId": rid})["body"])
    pytest.fail(f"the form's Submit did not create a flow run in {FORM_SUBMIT_TRIES} tries")


def _set_values(params: dict) -> dict:
    """What a submitted config sets: the form may send an untouched section as an empty object ({}), which sets
    nothing (PartBConfig merges it over the profile), so empty objects are left out before comparing."""
    out = {}
    for k, v in params.items():
        if isinstance(v, dict):
            v = _set_values(v)
            if not v:
                continue
        out[k] = v
    return out


def test_run_form_unchanged_runs_the_profile_and_a_changed_field_only_that(ops_stack, tmp_path):
    """Issue 20.5: the form showed 'Profile: tiny' but filled every field with the course value and sent it. Now an
    unchanged submit sends the deployment's parameters alone and runs tiny; typing 3 into class_ddpm's Guidance
    sends that one value, and the MLflow run shows it as the param, its profile tiny and the change recorded."""
    try:
        exe = browser.find_or_install()
    except browser.BrowserUnavailable as exc:
        pytest.skip(f"no headless Chromium here: {exc}")
    api, ml = ops_stack["api"], ops_stack["mlflow"]
    ui = api.rsplit("/api", 1)[0]
    deps = stackmod.http_json("POST", f"{api}/deployments/filter", {"deployments": {"name": {"any_": ["tiny"]}}})
    tiny = next(d for d in deps if d["parameters"] == {"config": {"profile": "tiny"}})
    shots = browser.screenshot_dir(tmp_path)
    with browser.chromium(exe, width=1400, height=1100) as page:
        unchanged = submit_custom_run(page, ui, tiny["id"], {}, shots / "prefect-form-unchanged.png")
        guided = submit_custom_run(page, ui, tiny["id"], {("Class Ddpm", "Guidance"): "3"},
                                   shots / "prefect-form-guidance-3.png")
    assert _set_values(unchanged["parameters"]["config"]) == {"profile": "tiny"}, unchanged["parameters"]
    assert _set_values(guided["parameters"]["config"]) == {"profile": "tiny", "class_ddpm": {"guidance": 3}}, \
        guided["parameters"]

    for fr in (unchanged, guided):
        wait_flow_run(ops_stack, fr["id"], timeout=2 * RUN_TIMEOUT_S)
    exp = ml.experiment_id("difflab")  # made by the first run (this test may run alone)
    part_b_runs = {}
    for fr, guidance, changed in ((unchanged, "5.0", "none"), (guided, "3.0", "class_ddpm.guidance=3.0")):
        runs = [r for r in ml.search(exp, f"tags.`prefect.flow_run_id` = '{fr['id']}'")
                if run_tags(r).get("flow") == "part_b"]
        assert len(runs) == 1, [r["info"]["run_name"] for r in runs]
        params, tags = run_params(runs[0]), run_tags(runs[0])
        assert tags["profile"] == "tiny" and runs[0]["info"]["run_name"] == "part_b-tiny"
        # the tiny profile's sizes, not the course's the form used to send
        assert (params["denoiser.hidden"], params["denoiser.epochs"], params["class_ddpm.hidden"],
                params["time_ddpm.num_timesteps"], params["evaluation.num_samples"]) == ("4", "2", "4", "20", "40")
        assert params["class_ddpm.guidance"] == guidance and params["evaluation.enabled"] == "True"
        assert tags["profile_overrides"] == changed
        part_b_runs[fr["id"]] = runs[0]["info"]["run_id"]
    with browser.chromium(exe, width=1400, height=1100) as page:  # the param, as the MLflow UI shows it
        page.goto(f"{ml.base}/#/experiments/{exp}/runs/{part_b_runs[guided['id']]}?workflowType=machine_learning")
        search = "document.querySelector('input[placeholder=\"Search parameters\"]')"
        assert page.wait_for(f"!!{search}", timeout=90), "no parameter table on the MLflow run page"
        page.evaluate(f"{search}.focus()")
        page.send("Input.insertText", {"text": "class_ddpm.guidance"})  # the table lists 137 params, virtualised
        shown = page.wait_for("(() => { const t = document.body.innerText; const i = t.indexOf('Parameters (');"
                              " return i >= 0 && t.slice(i).match(/class_ddpm\\.guidance\\s+3\\.0/) !== null; })()",
                              timeout=30)
        page.pump(1.0)
        page.screenshot(shots / "mlflow-run-guidance-3.png", full_page=False)
        assert shown, "the MLflow run page does not show class_ddpm.guidance 3.0"


def test_a_run_cancelled_in_prefect_says_it_was_cancelled_and_from_where(ops_stack):
    """Cancelled from Prefect, the run's difflab.error was just `TerminationSignal: `. Now it says cancel, where, and
    how to resume; the MLflow run ends KILLED."""
    env, ml = ops_stack["env"], ops_stack["mlflow"]
    flow_run_id = trigger(env, "part_b/tiny", {"config": {"profile": "tiny", "force": True, "seed": 11}})
    query = f"tags.`prefect.flow_run_id` = '{flow_run_id}'"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:  # until it is training (the experiment exists once a run made it)
        exp = next(iter(ml.search_experiment("difflab")), None)
        if exp and any(r["info"]["status"] == "RUNNING" for r in ml.search(exp, query)):
            break
        assert time.monotonic() < deadline, f"the run never started:\n{flow_run_logs(ops_stack['api'], flow_run_id)}"
        time.sleep(0.5)
    res = prefect_cli(env, "flow-run", "cancel", flow_run_id)
    assert res.returncode == 0, res.stdout + res.stderr
    deadline = time.monotonic() + 120
    while True:
        parent = next(r for r in ml.search(exp, query) if run_tags(r).get("flow") == "part_b")
        if parent["info"]["status"] != "RUNNING" or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    error = run_tags(parent).get("difflab.error", "")
    assert parent["info"]["status"] == "KILLED", (parent["info"]["status"], error)
    assert error.startswith(f"cancelled in Prefect: flow run {flow_run_id} was cancelled"), error
    assert "SIGTERM" in error and "resume" in error


def test_zz_down_while_a_flow_runs_leaves_no_phantom_runs(ops_stack):
    """Last (it stops the stack): `stack down` mid-run ends the flow run CRASHED and its MLflow runs FAILED."""
    env, api, ml = ops_stack["env"], ops_stack["api"], ops_stack["mlflow"]
    down = [sys.executable, "-m", "ops.stack", "--state-dir"]
    res = subprocess.run(down + [str(ops_stack["remote"].dir), "down"], env=env, cwd=str(ROOT),
                         capture_output=True, text=True, timeout=120)  # one worker left: it takes the run
    assert res.returncode == 0, res.stdout + res.stderr
    flow_run_id = trigger(env, "part_b/tiny", {"config": {"profile": "tiny", "force": True, "seed": 7}})
    exp = ml.experiment_id("difflab")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:  # until the flow run has opened its MLflow run and is training
        runs = ml.search(exp, f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
        if runs and runs[0]["info"]["status"] == "RUNNING":
            break
        assert time.monotonic() < deadline, f"the run never started:\n{flow_run_logs(api, flow_run_id)}"
        time.sleep(0.5)
    parent_id = runs[0]["info"]["run_id"]
    res = subprocess.run(down + [str(ops_stack["state"]), "down"], env=env, cwd=str(ROOT),
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    # The MLflow run is ended with its reason either by the run doctor (the process is gone) or, when the
    # stopped flow process got to it first, by the run itself as it failed; the stores are what count.
    assert "stack stopped" in res.stdout, res.stdout
    import sqlite3

    with sqlite3.connect(ops_stack["state"] / "mlflow.db") as db:
        status = db.execute("SELECT status FROM runs WHERE run_uuid = ?", (parent_id,)).fetchone()
        error = db.execute("SELECT value FROM tags WHERE run_uuid = ? AND key = 'difflab.error'", (parent_id,)).fetchone()
        running = db.execute("SELECT count(*) FROM runs WHERE status = 'RUNNING'").fetchone()
    assert status in (("FAILED",), ("KILLED",)) and error and error[0], (status, error, res.stdout)
    assert running == (0,), "a run stayed RUNNING after down"
    with sqlite3.connect(ops_stack["state"] / "prefect-home" / "prefect.db") as db:
        states = dict(db.execute("SELECT id, state_type FROM flow_run").fetchall())
    assert states.get(flow_run_id) == "CRASHED", states
    assert "RUNNING" not in states.values(), states
