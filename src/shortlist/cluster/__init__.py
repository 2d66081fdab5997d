"""The scale-out stack on one machine: `infra/local-cluster up|down|status|env|dvc-remote`.

What `up` starts, each on 127.0.0.1 on a free port, in its own process group, with its
log and pid file under the state dir (default `<work_dir>/cluster`):

    postgres        Debian's PostgreSQL, a cluster in <state>/postgres (run as the
                    `postgres` user when started as root: it refuses root); databases
                    airflow, mlflow and mlflow_auth, each with its own role and password
    redis           Debian's redis-server, the Celery broker (password required)
    s3              SeaweedFS (`weed mini`, the S3 server the tests use), buckets
                    `shortlist` (data, bundles, live pointer, DVC remote) and `mlflow`
    mlflow          MLflow server: backend store and basic-auth users on PostgreSQL,
                    artifacts proxied to s3://mlflow/artifacts
    airflow-api     Airflow 3 api-server (UI, REST API, task execution API)
    scheduler       Airflow scheduler, CeleryExecutor (metadata and results on PostgreSQL)
    dag-processor   Airflow DAG processor (the repository's dags/)
    worker-1/2      two Celery workers, concurrency 1 each; a task instance's hostname
                    names the worker that ran it (`worker_hostname`)

The DAGs read `<state>/params.yaml`: the given params with data, bundles (and so the
live pointer) on S3 and MLflow at the cluster's server. `status --json` prints every
URL, port, login and pid; `env` prints the variables a shell needs to use the cluster
(Airflow CLI, MLflow client, boto3, `shortlist --set ...`); `dvc-remote DIR` points a
DVC repository at the S3 remote. `down` stops what `up` started, last started first,
each with its own stop signal, then whatever its process tree left, and reports
anything still running. Secrets are generated once into <state>/cluster.json (0600).

Modules: `base` (names, services, ClusterError), `procs` (process and port helpers),
`state` (`Cluster`: one state dir), `postgres`, `redis`, `s3`, `mlflow`, `airflow` (one
service each), `lifecycle` (`up`, `down`, `status`), `dvc` (`dvc_remote`), `cli` (`main`).
Airflow's workers import `shortlist.cluster.worker_hostname`: keep it exported here.
"""

from __future__ import annotations

from shortlist.cluster.airflow import worker_hostname
from shortlist.cluster.base import ClusterError
from shortlist.cluster.cli import main
from shortlist.cluster.dvc import dvc_remote
from shortlist.cluster.lifecycle import down, missing_binaries, status, up
from shortlist.cluster.state import Cluster

__all__ = [
    "Cluster",
    "ClusterError",
    "down",
    "dvc_remote",
    "main",
    "missing_binaries",
    "status",
    "up",
    "worker_hostname",
]
