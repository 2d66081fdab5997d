"""MLflow for the cluster: `up_mlflow` starts the server with its store and basic-auth
users on PostgreSQL and artifacts proxied to S3, then creates the project's accounts."""

from __future__ import annotations

import os
from typing import Any

from shortlist.cluster.base import BIN, HOST, MLFLOW_BUCKET
from shortlist.cluster.procs import http_ok, wait
from shortlist.cluster.state import Cluster

MLFLOW_AUTH_CONFIG = """[mlflow]
default_permission = READ
database_uri = {db}
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
"""


def up_mlflow(c: Cluster, st: dict[str, Any], timeout: float) -> None:
    from shortlist.stack import ensure_mlflow_accounts, mlflow_secrets

    url = c.urls(st)["mlflow"]
    params = c._stack_params()
    if c.record("mlflow"):
        return
    s = mlflow_secrets(params)  # admin, service account and reviewer passwords (0600)
    config = c.dir / "mlflow-basic-auth.ini"
    auth_db = c._pg_url(st, "mlflow_auth", "mlflow", "mlflow_db", "postgresql+psycopg")
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(MLFLOW_AUTH_CONFIG.format(db=auth_db))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        **c.s3_env(st),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": s["admin_password"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": s["secret_key"],
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        c._pg_url(st, "mlflow", "mlflow", "mlflow_db", "postgresql+psycopg"),
        "--artifacts-destination",
        f"s3://{MLFLOW_BUCKET}/artifacts",
        "--host",
        HOST,
        "--port",
        str(st["ports"]["mlflow"]),
        "--workers",
        "1",
        "--app-name",
        "basic-auth",
    ]
    proc = c._spawn("mlflow", cmd, env)
    wait("mlflow", lambda: http_ok(f"{url}/health"), proc, c.log("mlflow"), timeout)
    ensure_mlflow_accounts(params, url)
    print(
        f"mlflow        up: {url} (store on postgres, artifacts s3://{MLFLOW_BUCKET}/artifacts)",
        flush=True,
    )
