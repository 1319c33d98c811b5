"""MLflow's backend store and Prefect's database on a real PostgreSQL: Debian's server, started by the test
on loopback.

`scripts/install_postgres.sh` installs the `postgresql` package when it is missing
(CI: root, apt). The test runs its own cluster in a temp directory on a free port,
starts the stack with `--backend-store-uri postgresql://.../mlflow` and
`--prefect-database-url postgresql://.../prefect` (asyncpg), logs a run the way the
flows do (difflab.tracking: nested runs, params, metrics, an image, a checkpoint, a
registered model) against the MLflow server, and reads it back through the REST API
and straight from PostgreSQL's tables, and finds the stack's work pool in Prefect's own tables there.
Everything started is stopped, pass or fail.
It skips only where installing PostgreSQL is impossible (no apt-get, not root) and
never in CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ops import stack as stackmod

ROOT = Path(__file__).resolve().parents[1]
DB_USER = "mlflow"


def _postgres_bindir() -> Path:
    try:
        res = subprocess.run(["bash", str(ROOT / "scripts" / "install_postgres.sh")], capture_output=True, text=True,
                             timeout=900, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail("scripts/install_postgres.sh took more than 15 minutes")
    if res.returncode == 3 and not os.environ.get("CI"):
        pytest.skip(f"PostgreSQL cannot be installed here: {res.stderr.strip()}")
    assert res.returncode == 0, f"scripts/install_postgres.sh failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return Path(res.stdout.strip().splitlines()[-1])


class LocalPostgres:
    """One throwaway cluster: initdb, pg_ctl start on 127.0.0.1:<port>, trust auth, pg_ctl stop."""

    def __init__(self, bindir: Path):
        self.bin = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="difflab-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = stackmod.free_port()
        self.as_root = os.geteuid() == 0  # the server refuses to run as root: use Debian's `postgres` user
        self.started = False

    def _run(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        full = (["runuser", "-u", "postgres", "--"] if self.as_root else []) + list(cmd)
        return subprocess.run(full, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env={**os.environ, "LC_ALL": "C"})

    def start(self) -> str:
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        res = self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", DB_USER, "--auth=trust",
                        "-E", "UTF8", "--locale=C", "--no-sync")
        assert res.returncode == 0, f"initdb failed:\n{res.stdout}\n{res.stderr}"
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self.started = True  # from here on, stop() must run
        res = self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts,
                        "-w", "-t", "60", "start")
        assert res.returncode == 0, f"pg_ctl start failed:\n{res.stdout}\n{res.stderr}\n{self.log_tail()}"
        for db in ("mlflow", "prefect"):
            res = self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER, db)
            assert res.returncode == 0, f"createdb {db} failed:\n{res.stdout}\n{res.stderr}"
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/mlflow"

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.started:
            try:
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "-t", "30",
                          "stop", timeout=60)
            except subprocess.TimeoutExpired:
                pass
            pid_file = self.data / "postmaster.pid"
            if pid_file.exists():  # pg_ctl could not stop it: kill the postmaster (its children follow)
                try:
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres():
    pg = LocalPostgres(_postgres_bindir())
    try:
        yield pg.start()
    finally:
        pg.stop()


LOG_LIKE_A_FLOW = r"""
import json, sys
from pathlib import Path
import numpy as np, torch
from difflab import tracking
from difflab.config import TrackingConfig

tmp = Path(sys.argv[1])
tracking.configure(TrackingConfig(experiment="pg-check"))
with tracking.run("pg-parent", "pg-check", tags={"flow": "pg-check"}) as parent:
    tracking.log_params({"profile": "tiny", "backend": "postgresql"})
    tracking.log_metrics({"final_loss": 0.25})
    with tracking.run("stage", "pg-check", parent_run_id=parent, tags={"difflab.stage": "stage"}) as child:
        tracking.log_series("train_loss", [1.0, 0.5, 0.25], 1)
        tracking.log_image(np.full((28, 28), 128, dtype=np.uint8), "samples", step=1)
        torch.save({"weight": torch.ones(3)}, tmp / "final.pt")
        tracking.log_file(tmp / "final.pt", "checkpoints")
        tracking.log_model(torch.nn.Linear(2, 2), registered_name="difflab-pg-check")
print(json.dumps({"parent": parent, "child": child}))
"""


def test_mlflow_on_postgres_backend_store(postgres, tmp_path):
    import psycopg

    from test_ops_e2e import MlflowRest, ops_env, run_metrics, run_params, run_tags

    state = tmp_path / "stack"
    env = ops_env(tmp_path / "prefect-home")
    cmd = [sys.executable, "-m", "ops.stack", "--state-dir", str(state), "up",
           "--prefect-port", str(stackmod.free_port()), "--mlflow-port", str(stackmod.free_port()),
           "--workers", "0", "--no-deploy", "--no-scheduler", "--timeout", "150",
           "--backend-store-uri", postgres, "--artifacts-destination", str(tmp_path / "artifacts"),
           "--prefect-database-url", postgres.rsplit("/", 1)[0] + "/prefect"]
    stack_id = None
    try:
        res = subprocess.run(cmd, env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=300,
                             stdin=subprocess.DEVNULL)
        st = stackmod.Stack(state)
        stack_id = st.state.get("id")
        assert res.returncode == 0, f"stack up on PostgreSQL failed:\n{res.stdout}\n{res.stderr}"
        assert "postgresql://" in res.stdout
        uri = st.state["tracking_uri"]

        client = subprocess.run([sys.executable, "-c", LOG_LIKE_A_FLOW, str(tmp_path)],
                                env={**env, "MLFLOW_TRACKING_URI": uri}, cwd=str(tmp_path),
                                capture_output=True, text=True, timeout=180)
        assert client.returncode == 0, f"logging to the server failed:\n{client.stdout}\n{client.stderr}"
        ids = json.loads(client.stdout.strip().splitlines()[-1])

        ml = MlflowRest(uri)
        exp = ml.experiment_id("pg-check")
        runs = {r["info"]["run_id"]: r for r in ml.search(exp)}
        parent, child = runs[ids["parent"]], runs[ids["child"]]
        assert parent["info"]["status"] == child["info"]["status"] == "FINISHED"
        assert run_params(parent) == {"profile": "tiny", "backend": "postgresql"}
        assert run_metrics(parent)["final_loss"] == 0.25
        assert run_tags(child)["mlflow.parentRunId"] == ids["parent"]
        history = ml.get("metrics/get-history", run_id=ids["child"], metric_key="train_loss")["metrics"]
        assert [m["value"] for m in sorted(history, key=lambda m: m["step"])] == [1.0, 0.5, 0.25]
        files = [f["path"] for f in ml.artifacts(ids["child"], "checkpoints")]
        assert files == ["checkpoints/final.pt"]
        assert ml.artifact_bytes(ids["child"], "checkpoints/final.pt")[:2] == b"PK"
        assert any(f["path"].endswith(".png") for f in ml.artifacts(ids["child"], "images"))
        versions = ml.get("registered-models/get", name="difflab-pg-check")["registered_model"]
        assert versions["latest_versions"][0]["run_id"] == ids["child"]

        # The rows really are in PostgreSQL, not in some fallback store.
        with psycopg.connect(postgres) as conn, conn.cursor() as cur:
            cur.execute("SELECT status FROM runs WHERE run_uuid IN (%s, %s)", (ids["parent"], ids["child"]))
            assert sorted(r[0] for r in cur.fetchall()) == ["FINISHED", "FINISHED"]
            cur.execute("SELECT value FROM params WHERE run_uuid = %s AND key = 'backend'", (ids["parent"],))
            assert cur.fetchone() == ("postgresql",)
            cur.execute("SELECT name FROM registered_models")
            assert ("difflab-pg-check",) in cur.fetchall()
        # ... and Prefect's server keeps its own state in PostgreSQL too: the pool `up` created is there.
        assert "Prefect store   postgresql+asyncpg://" in res.stdout
        with psycopg.connect(postgres.rsplit("/", 1)[0] + "/prefect") as conn, conn.cursor() as cur:
            cur.execute("SELECT name FROM work_pool")
            assert ("difflab",) in cur.fetchall()
    finally:
        st = stackmod.Stack(state)
        stack_id = stack_id or st.state.get("id")
        st.stop(timeout=20)
        if stack_id:
            assert not stackmod._pids_with_env(stack_id), "stack processes left running"
