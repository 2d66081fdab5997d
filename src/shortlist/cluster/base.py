"""Names every part of the local cluster shares: paths, host, buckets, reserved ports,
the services in start order (each with its stop signal) and `ClusterError`. No logic."""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
# src/shortlist/cluster/base.py -> the repository root.
REPO = Path(__file__).resolve().parents[3]
HOST = "127.0.0.1"
WORKERS = 2
DATA_BUCKET = "shortlist"
MLFLOW_BUCKET = "mlflow"
S3_REGION = "us-east-1"
S3_ACCESS_KEY = "shortlist-cluster"
WORKER_ENV = "SHORTLIST_CLUSTER_WORKER"
STATE_FILE = "cluster.json"
# Ports the default stack (`make up`) and Airflow's log server use: never chosen here.
RESERVED_PORTS = {5000, 8000, 8080, 8793, 8794}


class ClusterError(RuntimeError):
    """A part of the cluster could not be started or stopped; the message says which."""


@dataclass
class Service:
    name: str
    stop_signal: int
    stop_timeout_s: float


# Start order; `down` goes the other way.
SERVICES = [
    Service("postgres", signal.SIGINT, 30),  # SIGINT: PostgreSQL's fast shutdown
    Service("redis", signal.SIGTERM, 15),
    Service("s3", signal.SIGINT, 15),  # weed shuts down cleanly on SIGINT
    Service("mlflow", signal.SIGTERM, 20),
    Service("airflow-api", signal.SIGTERM, 30),
    Service("scheduler", signal.SIGTERM, 30),
    Service("dag-processor", signal.SIGTERM, 30),
    *[Service(f"worker-{i}", signal.SIGTERM, 60) for i in range(1, WORKERS + 1)],
]
