"""MLflow tracking: one place that decides where runs go and how they are named.

The tracking URI comes from $MLFLOW_TRACKING_URI when set (a server, in tests and in
production), else from params (`mlflow.tracking_uri`, a local SQLite store by default).
mlflow is imported lazily so DAG parsing and light CLI commands stay fast.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shortlist.config import Params


def tracking_uri(params: Params) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.mlflow.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return uri


def configure(params: Params):
    """Point the mlflow client at the configured store and experiment; returns mlflow."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(params))
    mlflow.set_experiment(params.mlflow.experiment)
    return mlflow


@contextmanager
def start_run(
    params: Params, run_name: str, stage: str, tags: dict[str, Any] | None = None
) -> Iterator[Any]:
    """An MLflow run named for humans and tagged with its stage, for the UI's filters."""
    mlflow = configure(params)
    all_tags = {"shortlist.stage": stage, **{k: str(v) for k, v in (tags or {}).items()}}
    with mlflow.start_run(run_name=run_name, tags=all_tags) as run:
        yield run


def metric_key(key: str) -> str:
    """MLflow metric names allow no '@': ``all/recall@20`` -> ``all/recall_at_20``."""
    return key.replace("@", "_at_")
