"""Start, stop and inspect the whole cluster: `up` (every service not yet running, in
start order), `down` (last started first, then whatever each process tree left),
`status`, and `missing_binaries` (the system programs this machine lacks)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import time
from pathlib import Path
from typing import Any

from shortlist.cluster.airflow import up_airflow
from shortlist.cluster.base import (
    BIN,
    DATA_BUCKET,
    MLFLOW_BUCKET,
    REPO,
    S3_REGION,
    SERVICES,
    ClusterError,
)
from shortlist.cluster.mlflow import up_mlflow
from shortlist.cluster.postgres import pg_bin, up_postgres
from shortlist.cluster.procs import alive, process_tree, start_time
from shortlist.cluster.redis import up_redis
from shortlist.cluster.s3 import up_s3
from shortlist.cluster.state import Cluster


def missing_binaries() -> list[str]:
    """The system programs the cluster needs that this machine lacks."""
    out = []
    for name in ("postgres", "initdb"):
        try:
            pg_bin(name)
        except ClusterError:
            out.append(f"{name} (Debian package postgresql)")
    if not shutil.which("redis-server"):
        out.append("redis-server (Debian package redis-server)")
    for name in ("weed", "airflow", "mlflow"):
        if not (BIN / name).exists():
            out.append(f"{name} (in the project's venv)")
    return out


def up(state_dir: str | Path, params_file: str | Path | None = None, timeout: float = 600) -> dict:
    """Start every service that is not running yet; returns `status()`."""
    missing = missing_binaries()
    if missing:
        raise ClusterError("missing: " + ", ".join(missing))
    c = Cluster(state_dir)
    c.dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        c.dir.chmod(c.dir.stat().st_mode | stat.S_IXOTH)  # the postgres user passes through
    st = c._init_state()
    write_params(c, st, params_file)
    started = time.monotonic()
    up_postgres(c, st, timeout)
    up_redis(c, st, timeout)
    up_s3(c, st, timeout)
    up_mlflow(c, st, timeout)
    up_airflow(c, st, timeout)
    print(f"cluster up in {time.monotonic() - started:.0f}s; state in {c.dir}", flush=True)
    return status(state_dir)


def write_params(c: Cluster, st: dict[str, Any], params_file: str | Path | None) -> None:
    """<state>/params.yaml: the given params (default the repository's) with data and
    bundles on S3, MLflow at the cluster's server, local work paths under the state dir."""
    import yaml

    from shortlist.config import load_params

    base = load_params(params_file or REPO / "params.yaml")
    params = base.under(c.dir / "work").with_overrides(
        {
            "data.dir": f"s3://{DATA_BUCKET}/data",
            "bundle.root": f"s3://{DATA_BUCKET}/bundles",
            "mlflow.tracking_uri": c.urls(st)["mlflow"],
            "storage.s3_endpoint_url": c.urls(st)["s3"],
            "storage.s3_region": S3_REGION,
        }
    )
    c.params_file().write_text(yaml.safe_dump(params.model_dump(), sort_keys=False))


def down(state_dir: str | Path) -> dict[str, Any]:
    """Stop what `up` started, last started first; returns how each service ended and
    the processes still running afterwards (empty when everything stopped)."""
    c = Cluster(state_dir)
    before = c.processes()  # every process of every service, before any is signalled
    ended: dict[str, str] = {}
    for svc in reversed(SERVICES):
        rec = c.record(svc.name)
        if rec is None:
            c._pid_file(svc.name).unlink(missing_ok=True)
            continue
        pid = int(rec["pid"])
        tree = {p: start_time(p) for p in process_tree(pid)}
        t0 = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, svc.stop_signal)
        deadline = time.monotonic() + svc.stop_timeout_s
        while c.record(svc.name) and time.monotonic() < deadline:
            time.sleep(0.2)
        how = "clean" if c.record(svc.name) is None else "forced"
        # Whatever the leader left (pool children, a task mid-run): TERM, then KILL.
        left = alive(set(tree) | process_tree(pid), tree)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not left:
                break
            for p in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(p, sig)
            grace = time.monotonic() + (10 if sig == signal.SIGTERM else 5)
            while (left := alive(left, tree)) and time.monotonic() < grace:
                time.sleep(0.2)
            if sig == signal.SIGTERM and left:
                how = "forced"
        c._pid_file(svc.name).unlink(missing_ok=True)
        ended[svc.name] = how
        print(f"{svc.name:13s} stopped ({how}) in {time.monotonic() - t0:.1f}s", flush=True)
    still = sorted(alive(set(before), before))
    if not ended:
        print("nothing to stop", flush=True)
    if still:
        print(f"still running: {still}", flush=True)
    return {"ended": ended, "still_running": still, "stopped_pids": sorted(before)}


def status(state_dir: str | Path) -> dict[str, Any]:
    """Which services run (pid), their URLs, logins, and every pid of their trees."""
    c = Cluster(state_dir)
    st = c.state()
    out: dict[str, Any] = {"state_dir": str(c.dir), "services": {}}
    for svc in SERVICES:
        rec = c.record(svc.name)
        out["services"][svc.name] = {"running": rec is not None, "pid": rec and rec["pid"]}
    out["processes"] = sorted(c.processes())
    if st.get("ports"):
        from shortlist.stack import mlflow_accounts

        out["urls"] = c.urls(st)
        out["ports"] = st["ports"]
        out["params_file"] = str(c.params_file())
        out["airflow_home"] = str(c.airflow_home())
        out["buckets"] = {"data": DATA_BUCKET, "mlflow": MLFLOW_BUCKET}
        out["dvc_remote"] = f"s3://{DATA_BUCKET}/dvc"
        logins = {"airflow": ["admin", c.airflow_password()]}
        if c.params_file().exists():
            for who, (user, password) in mlflow_accounts(c._stack_params()).items():
                logins[f"mlflow_{who}"] = [user, password]
        out["logins"] = logins
        out["logs"] = str(c.logs)
    return out
