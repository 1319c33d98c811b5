"""Run housekeeping: the run doctor, and setting the champion model by hand.

    difflab runs doctor [--experiment NAME] [--stale-hours H] [--dry-run]
    difflab runs promote [--model difflab-class-ddpm] (--version N | --run-id RUN) [--alias champion]

Runs whose process died stay RUNNING forever unless something ends them.

A RUNNING MLflow run carries the host, pid and pid start time of the process that opened
it (tags difflab.host, difflab.pid, difflab.pid_start, set by difflab.tracking.run). On
that host, a run whose pid is gone, or now belongs to another process, is dead: it is
marked FAILED with the reason in its `difflab.error` tag, and the Prefect flow run it
names (tag prefect.flow_run_id) is set CRASHED where a Prefect API answers. Flow runs a
process worker started on this host (Prefect's infrastructure_pid "host:pid") whose
process is gone are set CRASHED too, with their subflow runs. Runs of other hosts are
left alone unless --stale-hours is given and they started longer ago than that (MLflow
keeps no heartbeat, so a run's age is the only evidence from another machine).

The same check runs, MLflow side only plus the linked flow runs, whenever a flow opens
a new top-level run, and in `difflab stack up` / `difflab stack down` (after the workers
and their flow runs are stopped, before the servers are).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Mapping, Sequence

from difflab.names import HOST_TAG, PID_START_TAG, PID_TAG, PREFECT_FLOW_RUN_TAG
from difflab.procs import alive, hostname
from ops.supervision import http_json, prefect_healthy

ACTIVE_STATES = ["RUNNING", "PENDING", "CANCELLING"]


def _prefect_answers(api: str) -> bool:
    return bool(api) and prefect_healthy(api)


def crash_flow_runs(reasons: Mapping[str, str], api: str | None = None) -> list[str]:
    """Set these Prefect flow runs CRASHED (message "difflab: <reason>") if they are still RUNNING, PENDING
    or CANCELLING; returns the ids changed. `api`: the Prefect API URL (None: the one Prefect's settings
    give, e.g. the flow run's own server). Does nothing, quietly, when no Prefect API answers.

    The one place flow runs are crashed: the run doctor, `difflab runs doctor` and (`reap_quietly`, through
    `tracking.set_run_start_hook`, registered by the `flows` package) whenever a flow opens a new top-level run."""
    changed: list[str] = []
    try:
        from prefect.client.orchestration import SyncPrefectClient, get_client
        from prefect.states import Crashed

        with (SyncPrefectClient(api) if api else get_client(sync_client=True)) as client:
            for flow_run_id, reason in reasons.items():
                try:
                    fr = client.read_flow_run(flow_run_id)
                except Exception:  # noqa: BLE001 - another server's run, or deleted
                    continue
                if fr.state is not None and fr.state.type.value in ACTIVE_STATES:
                    client.set_flow_run_state(flow_run_id, Crashed(message=f"difflab: {reason}"), force=True)
                    changed.append(flow_run_id)
    except Exception:  # noqa: BLE001 - Prefect unreachable: the MLflow side is still fixed
        return changed
    return changed


def dead_run_reason(run, stale_hours: float | None = None, now_ms: int | None = None) -> str | None:
    """Why a RUNNING run is dead, or None while its process may still be writing to it.

    On this host: its pid is gone, or runs with another start time (recycled). Another host's
    runs (and runs without process tags) are left alone, unless `stale_hours` is given and the
    run started longer ago than that; MLflow keeps no heartbeat, so age is the only evidence."""
    tags = run.data.tags
    host, pid = tags.get(HOST_TAG), tags.get(PID_TAG)
    if host == hostname() and pid and pid.isdigit():
        if not alive(int(pid), tags.get(PID_START_TAG)):
            return f"process {pid} on {host} that ran it is gone (killed, crashed or the machine restarted)"
        return None
    if stale_hours is not None and run.info.start_time:
        age_h = ((now_ms or _now_ms()) - run.info.start_time) / 3_600_000
        if age_h > stale_hours:
            where = f"on {host}" if host else "with no process recorded"
            return f"still RUNNING {age_h:.1f} h after it started {where} (older than {stale_hours:g} h)"
    return None


def find_dead_runs(experiments: Sequence[str] | None = None, stale_hours: float | None = None) -> list[dict]:
    """RUNNING runs whose process is gone: [{run_id, run_name, experiment_id, reason, flow_run_id}]."""
    from difflab import tracking  # lazily: `difflab stack` imports this module and needs no MLflow

    now = _now_ms()
    found = []
    for r in tracking.running_runs(experiments):
        reason = dead_run_reason(r, stale_hours, now)
        if reason:
            found.append({"run_id": r.info.run_id, "run_name": r.info.run_name, "experiment_id": r.info.experiment_id,
                          "reason": reason, "flow_run_id": r.data.tags.get(PREFECT_FLOW_RUN_TAG)})
    return found


def mark_failed(run_id: str, reason: str) -> None:
    """End a run FAILED with the reason in its difflab.error tag; its artifacts (checkpoints) stay."""
    from difflab import tracking

    tracking.end_run(run_id, "FAILED", reason)


def reap_dead_runs(experiments: Sequence[str] | None = None, stale_hours: float | None = None,
                   crash: bool = True) -> list[dict]:
    """Mark dead RUNNING runs FAILED and, with `crash` and where Prefect answers, their flow runs CRASHED."""
    dead = find_dead_runs(experiments, stale_hours)
    for d in dead:
        mark_failed(d["run_id"], d["reason"])
    flow_runs = {d["flow_run_id"]: d["reason"] for d in dead if d["flow_run_id"]}
    if crash and flow_runs:
        crashed = crash_flow_runs(flow_runs)
        for d in dead:
            d["flow_run_crashed"] = d["flow_run_id"] in crashed
    return dead


def reap_quietly(experiment: str) -> None:
    """The run doctor as a new top-level run opens (`tracking.set_run_start_hook`, registered by the `flows`
    package): one cheap query; never lets housekeeping fail the flow."""
    from difflab import tracking

    try:
        # Prefect's side only where an API is at hand: in a flow run, or a server named by PREFECT_API_URL
        # (outside both, Prefect's client would start a temporary server just for this).
        prefect = tracking.in_flow_run() or bool(os.environ.get("PREFECT_API_URL"))
        for d in reap_dead_runs([experiment], crash=prefect):
            print(f"difflab: marked MLflow run {d['run_id']} ({d['run_name']}) FAILED: {d['reason']}")
    except Exception:  # noqa: BLE001
        pass


def _now_ms() -> int:
    return int(time.time() * 1000)


def dead_worker_flow_runs(api: str) -> dict[str, str]:
    """Active flow runs a process worker on this host started whose process is gone: {id: reason}."""
    base = api.rstrip("/")
    runs = http_json("POST", f"{base}/flow_runs/filter",
                     {"flow_runs": {"state": {"type": {"any_": ACTIVE_STATES}}}, "limit": 200}) or []
    me = hostname()
    dead = {}
    for fr in runs:
        host, _, pid = str(fr.get("infrastructure_pid") or "").rpartition(":")
        if host == me and pid.isdigit() and not alive(int(pid)):
            dead[fr["id"]] = f"flow run process {pid} on {host} is gone"
    for parent, reason in list(dead.items()):  # in-process subflows die with their parent
        children = http_json("POST", f"{base}/flow_runs/filter", {"flow_runs": {
            "parent_flow_run_id": {"any_": [parent]}, "state": {"type": {"any_": ACTIVE_STATES}}}}) or []
        for child in children:
            dead.setdefault(child["id"], f"its parent flow run died: {reason}")
    return dead


def doctor(tracking_uri: str | None = None, prefect_api_url: str | None = None, experiments: list[str] | None = None,
           stale_hours: float | None = None, dry_run: bool = False,
           out: Callable[[str], None] = print) -> dict[str, list]:
    """Find (and unless dry_run, end) dead runs; returns {"mlflow": [...], "prefect": [...]}."""
    from difflab import tracking
    from difflab.config import TrackingConfig

    tracking.configure(TrackingConfig(tracking_uri=tracking_uri) if tracking_uri else None)
    api = prefect_api_url if prefect_api_url is not None else os.environ.get("PREFECT_API_URL", "")
    if dry_run:
        runs = find_dead_runs(experiments, stale_hours)
    else:
        runs = reap_dead_runs(experiments, stale_hours, crash=False)
    verb = "would mark" if dry_run else "marked"
    for r in runs:
        out(f"MLflow run {r['run_id']} ({r['run_name']}): {verb} FAILED: {r['reason']}")
    crashed: list[str] = []
    if _prefect_answers(api):
        reasons = {r["flow_run_id"]: r["reason"] for r in runs if r.get("flow_run_id")}
        reasons.update(dead_worker_flow_runs(api))
        if dry_run:
            for flow_run_id, reason in reasons.items():
                out(f"Prefect flow run {flow_run_id}: would set CRASHED: {reason}")
            crashed = list(reasons)
        else:
            crashed = crash_flow_runs(reasons, api)
            for flow_run_id in crashed:
                out(f"Prefect flow run {flow_run_id}: set CRASHED: {reasons[flow_run_id]}")
    elif api:
        out(f"Prefect API {api} does not answer: flow runs left as they are")
    else:
        out("no PREFECT_API_URL: flow runs left as they are (set it, or `source .stack/env`, to fix them too)")
    if not runs and not crashed:
        out("no dead runs found")
    return {"mlflow": runs, "prefect": crashed}


def promote(model: str, version: str | None, run_id: str | None, alias: str, tracking_uri: str | None = None,
            out: Callable[[str], None] = print) -> str:
    """Point models:/<model>@<alias> at a version (or at the version a run logged); returns the version."""
    from difflab import tracking
    from difflab.config import TrackingConfig

    tracking.configure(TrackingConfig(tracking_uri=tracking_uri) if tracking_uri else None)
    if run_id:
        found = tracking.model_versions_of_run(model, run_id)
        if not found:
            raise ValueError(f"run {run_id} logged no version of registered model {model!r}; "
                             "give the class_ddpm stage run's id, or --version")
        version = found[0].version
    tracking.set_model_alias(model, alias, str(version))
    out(f"models:/{model}@{alias} -> version {version}")
    return str(version)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="difflab runs", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("doctor", help="mark runs whose process is gone FAILED (MLflow) and CRASHED (Prefect)")
    d.add_argument("--experiment", action="append", default=None, help="only this experiment (repeatable)")
    d.add_argument("--tracking-uri", default=None, help="default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    d.add_argument("--prefect-api-url", default=None, help="default $PREFECT_API_URL")
    d.add_argument("--stale-hours", type=float, default=None,
                   help="also end runs of other hosts (or without process tags) older than this")
    d.add_argument("--dry-run", action="store_true", help="only list what would change")
    pr = sub.add_parser("promote", help="point the champion alias at a registered model version by hand")
    pr.add_argument("--model", default="difflab-class-ddpm")
    which = pr.add_mutually_exclusive_group(required=True)
    which.add_argument("--version")
    which.add_argument("--run-id", help="the stage run that logged the version")
    pr.add_argument("--alias", default="champion")
    pr.add_argument("--tracking-uri", default=None)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "promote":
        try:
            promote(args.model, args.version, args.run_id, args.alias, args.tracking_uri)
        except Exception as exc:  # noqa: BLE001 - one line with the fix, as everywhere
            print(f"difflab: error: {str(exc).splitlines()[0]} (registered models come from `difflab part-b` runs; "
                  "see them in the MLflow UI under Models)", file=sys.stderr)
            return 2
        return 0
    doctor(args.tracking_uri, args.prefect_api_url, args.experiment, args.stale_hours, args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
