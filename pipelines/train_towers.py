"""Stage `train_towers`: a split directory -> a two-tower model directory.

Trains on the split's train part with early stopping on its validation part
(`shortlist.models.fit.train_two_tower`) and writes MODEL_DIR:
towers.safetensors (weights), towers.json (architecture, preprocessing state, snapshot
id, MLflow run id, validation metrics), items.parquet (the catalog it was trained with),
history.json / history.png (per-epoch curves) and metrics.json (for `dvc metrics`).
A tuning file (`shortlist tune`) whose data shape matches the split is applied first.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from shortlist.config import Params

METRICS = "metrics.json"
log = logging.getLogger(__name__)


def run(params: Params, *, split_dir: str, out_dir: str) -> dict[str, Any]:
    """Train the towers on SPLIT_DIR into OUT_DIR; returns a summary of the run."""
    from shortlist.data.split_io import load_split
    from shortlist.models.fit import train_two_tower
    from shortlist.tuning import apply_tuning

    split = load_split(str(split_dir))
    if not len(split.train):
        raise ValueError(f"{split_dir}: the train part is empty")
    params, tuning = apply_tuning(params, split.manifest)
    log.info("tuning: %s", tuning)
    model, report = train_two_tower(
        params,
        split.train,
        split.validation,
        split.items,
        split.users,
        snapshot_id=split.snapshot_id,
        out_dir=str(out_dir),
        mlflow_run=True,
        real_time=split.manifest.get("timestamps", "real") == "real",
    )
    _record_split(params, report.get("mlflow_run_id"), split.manifest)
    metrics = {
        "validation": report["validation"],
        "validation_with_popularity": report["validation_with_popularity"],
        "inference_popularity_weight": params.towers.logq.inference_popularity_weight,
        "best_epoch": report["best_epoch"],
        "epochs_run": report["epochs_run"],
        "history_mode": report["history_mode"],
        "split_mode": split.manifest.get("mode"),
        "tuning": tuning,
        "train_seconds": report["timings"]["train_seconds"],
    }
    Path(out_dir, METRICS).write_text(json.dumps(metrics, indent=2))
    return {
        "model_dir": str(out_dir),
        "fingerprint": model.fingerprint,
        "snapshot_id": split.snapshot_id,
        "mlflow_run_id": report.get("mlflow_run_id"),
        **metrics,
    }


def _record_split(params: Params, run_id: str | None, manifest: dict[str, Any]) -> None:
    """Add the split the towers learned from (mode, rule, sizes) to their MLflow run."""
    if not run_id:
        return
    from shortlist.data.split import tracking_record
    from shortlist.tracking import configure

    mlflow = configure(params)
    split_params, metrics = tracking_record(manifest)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_params(split_params)
        mlflow.log_metrics(metrics)
        mlflow.log_dict(manifest, "split/split.json")
