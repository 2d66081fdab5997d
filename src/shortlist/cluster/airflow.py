"""Airflow for the cluster: `up_airflow` migrates the database and starts the api-server,
scheduler, dag-processor and the Celery workers, waiting until each answers;
`worker_hostname` is the workers' `hostname_callable`."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from typing import Any

from shortlist.cluster.base import BIN, HOST, WORKER_ENV, WORKERS, ClusterError
from shortlist.cluster.procs import http_ok, tail, wait
from shortlist.cluster.state import Cluster


def worker_hostname() -> str:
    """Airflow's `hostname_callable` on the Celery workers: the machine's name plus the
    worker's, so a task instance records which of the workers on this host ran it."""
    name = os.environ.get(WORKER_ENV)
    fqdn = socket.getfqdn()
    return f"{name}.{fqdn}" if name else fqdn


def up_airflow(c: Cluster, st: dict[str, Any], timeout: float) -> None:
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW_", "AIRFLOW__", "MLFLOW_", "SHORTLIST_"))
        },
        **c.client_env(st),
        "PYTHONUNBUFFERED": "1",
    }
    c.airflow_home().mkdir(exist_ok=True)
    todo = [n for n in ("airflow-api", "scheduler", "dag-processor") if not c.record(n)]
    todo += [f"worker-{i}" for i in range(1, WORKERS + 1) if not c.record(f"worker-{i}")]
    if not todo:
        return
    # Idempotent: a no-op on a migrated database, the schema otherwise.
    t0 = time.monotonic()
    mig = subprocess.run(
        [str(BIN / "airflow"), "db", "migrate"],
        env=env,
        cwd=c.airflow_home(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if mig.returncode != 0:
        raise ClusterError(
            f"airflow db migrate failed:\n{mig.stdout[-3000:]}\n{mig.stderr[-3000:]}"
        )
    print(f"airflow db    migrated on postgres in {time.monotonic() - t0:.0f}s", flush=True)
    airflow = str(BIN / "airflow")
    procs = {}
    for name in todo:
        if name == "airflow-api":
            cmd = [airflow, "api-server", "--port", str(st["ports"]["airflow"]), "--host", HOST]
            procs[name] = c._spawn(name, cmd, env, cwd=c.airflow_home())
        elif name in ("scheduler", "dag-processor"):
            procs[name] = c._spawn(name, [airflow, name], env, cwd=c.airflow_home())
        else:
            i = name.split("-")[1]
            wenv = {
                **env,
                WORKER_ENV: name,
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "shortlist.cluster.worker_hostname",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(st["ports"][f"worker_{i}_logs"]),
            }
            cmd = [airflow, "celery", "worker", "--celery-hostname", f"{name}@%h"]
            cmd += ["--concurrency", "1", "--without-gossip", "--without-mingle"]
            procs[name] = c._spawn(name, cmd, wenv, cwd=c.airflow_home())
    url = c.urls(st)["airflow"]
    if "airflow-api" in procs:
        wait(
            "airflow api-server",
            lambda: http_ok(f"{url}/api/v2/monitor/health"),
            procs["airflow-api"],
            c.log("airflow-api"),
            timeout,
        )
    workers = [n for n in procs if n.startswith("worker-")]
    if workers:
        broker = env["AIRFLOW__CELERY__BROKER_URL"]

        def workers_ready() -> bool:
            for name in workers:
                if procs[name].poll() is not None:
                    raise ClusterError(
                        f"{name} exited with {procs[name].returncode}:\n{tail(c.log(name))}"
                    )
            return set(workers) <= celery_workers(broker)

        wait("celery workers", workers_ready, None, c.log(workers[-1]), timeout)
    for name, proc in procs.items():
        if proc.poll() is not None:
            raise ClusterError(f"{name} exited with {proc.returncode}:\n{tail(c.log(name))}")
    print(
        f"airflow       up: {url} (scheduler, dag-processor, {WORKERS} celery workers)", flush=True
    )


def celery_workers(broker: str) -> set[str]:
    """Names (before the @) of the Celery workers that answer a ping on the broker."""
    from celery import Celery

    app = Celery(broker=broker)
    try:
        replies = app.control.ping(timeout=2.0) or []
    finally:
        app.close()
    return {name.split("@")[0] for reply in replies for name in reply}
