"""Stage `train_towers`: a split directory -> a two-tower model directory.

Trains on the split's train part with early stopping on its validation part
(`shortlist.models.fit.train_two_tower`) and writes MODEL_DIR:
towers.safetensors (weights), towers.json (architecture, preprocessing state, snapshot
id, MLflow run id, validation metrics), items.parquet (the catalog it was trained with),
history.json / history.png (per-epoch curves) and metrics.json (for `dvc metrics`).
A tuning file (`shortlist tune`) whose data shape matches the split is applied first.

With `towers.processes` > 1 the stage starts that many ranks with torchrun, each running
this module (`python -m pipelines.train_towers`), waits for them and returns what rank
0 wrote: the CLI, DVC and the retrain DAG get data-parallel training from params alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from shortlist.config import Params, load_params

METRICS = "metrics.json"
log = logging.getLogger(__name__)


def run(params: Params, *, split_dir: str, out_dir: str) -> dict[str, Any]:
    """Train the towers on SPLIT_DIR into OUT_DIR; returns a summary of the run.

    In a rank of a distributed run, every rank trains and only rank 0 writes; with
    `towers.processes` > 1 outside one, the ranks are launched (`launch`) instead."""
    from shortlist.data.split_io import load_split
    from shortlist.models.distributed import in_launched_process
    from shortlist.models.fit import train_two_tower
    from shortlist.tuning import apply_tuning

    if params.towers.processes > 1 and not in_launched_process():
        return launch(params, split_dir=split_dir, out_dir=out_dir)

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
    main = _is_rank_zero()  # one process, or rank 0 of several: the one that writes
    if main:
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
        "processes": report.get("processes", 1),
    }
    if main:
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


def launch(params: Params, *, split_dir: str, out_dir: str) -> dict[str, Any]:
    """Run the stage as `towers.processes` ranks under torchrun on this machine; returns
    rank 0's summary. The ranks read these params from a file (overrides included), so
    each trains with exactly the params this process was given. Raises RuntimeError with
    torchrun's exit status when a rank fails (torchrun then stops the others)."""
    with tempfile.TemporaryDirectory(prefix="shortlist-ddp-") as tmp:
        params_file = Path(tmp, "params.yaml")
        params_file.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
        result_file = Path(tmp, "result.json")
        from shortlist.models.distributed import launch_command

        args = ["--params", str(params_file), "--split", str(split_dir), "--out", str(out_dir)]
        cmd = launch_command(
            params.towers.processes, __name__, [*args, "--result", str(result_file)]
        )
        log.info("launching %d training processes: %s", params.towers.processes, cmd)
        done = subprocess.run(cmd, check=False)
        if done.returncode != 0 or not result_file.exists():
            raise RuntimeError(
                f"distributed towers training ({params.towers.processes} processes) failed "
                f"with exit status {done.returncode}"
            )
        return json.loads(result_file.read_text())


def main(argv: list[str] | None = None) -> int:
    """One rank of a launched run: train, and on rank 0 write the summary to --result."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.train_towers")
    parser.add_argument("--params", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--result", help="where rank 0 writes the summary (JSON)")
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = run(load_params(a.params), split_dir=a.split, out_dir=a.out)
    if a.result and _is_rank_zero():
        Path(a.result).write_text(json.dumps(result, indent=2, default=str))
    return 0


def _is_rank_zero() -> bool:
    """True outside a distributed run and on its rank 0 (torchrun sets RANK)."""
    return int(os.environ.get("RANK", "0")) == 0


if __name__ == "__main__":
    sys.exit(main())
