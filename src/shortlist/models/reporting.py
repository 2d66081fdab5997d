"""Reporting a training run: per-epoch curves as a PNG, the report as JSON, MLflow."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shortlist.config import Params
from shortlist.tracking import metric_key


def plot_curves(
    history: Sequence[dict[str, Any]],
    metrics: Sequence[str],
    *,
    loss_label: str,
    metric_label: str,
    best_epoch: int | None = None,
    reference: dict[str, float] | None = None,
):
    """A figure of the training loss (left) and the given per-epoch metrics (right), with
    the best epoch as a vertical line and each `reference` (label -> value) as a
    horizontal one. The caller saves or logs it, then closes it (matplotlib.pyplot.close).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["loss"] for h in history], marker="o")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel(loss_label)
    for key in metrics:
        ax2.plot(epochs, [h[key] for h in history], marker="o", label=key.removeprefix("val_"))
    for label, value in (reference or {}).items():
        ax2.axhline(value, color="grey", linestyle=":", label=label)
    if best_epoch is not None:
        ax2.axvline(best_epoch, color="grey", linestyle="--", label="best epoch")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(metric_label)
    ax2.legend()
    fig.tight_layout()
    return fig


def write_history(report: dict[str, Any], out_dir: str) -> None:
    """history.json (the towers' training report) and history.png (its curves)."""
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.json").write_text(json.dumps(report, indent=2, default=str))
    hist = report["history"]
    fig = plot_curves(
        hist,
        sorted(k for k in hist[0] if k.startswith("val_")),
        loss_label="training loss (sampled softmax)",
        metric_label="validation (full ranking)",
        best_epoch=report["best_epoch"],
    )
    fig.savefig(out / "history.png", dpi=100)
    plt.close(fig)


def log_to_mlflow(
    params: Params, report: dict[str, Any], snapshot_id: str, out_dir: str | None
) -> str:
    """One MLflow run for a towers training: the towers' params, per-epoch and best
    metrics, timings and the model dir (or the history alone) as artifacts; its id."""
    from shortlist.tracking import start_run

    tags = {"shortlist.snapshot_id": snapshot_id} if snapshot_id else {}
    with start_run(params, run_name="train-towers", stage="train_towers", tags=tags) as run:
        import mlflow

        flat = _flatten(params.towers.model_dump(), "towers")
        mlflow.log_params({**flat, "seed": report["seed"]})
        for h in report["history"]:
            mlflow.log_metrics(
                {metric_key(k): v for k, v in h.items() if k != "epoch" and np.isfinite(v)},
                step=h["epoch"],
            )
        mlflow.log_metrics({metric_key(f"best_{k}"): v for k, v in report["validation"].items()})
        mlflow.log_metrics({"best_epoch": report["best_epoch"], **report["timings"]})
        if out_dir is not None:
            mlflow.log_artifacts(out_dir, artifact_path="model")
        else:
            with tempfile.TemporaryDirectory() as tmp:
                write_history(report, tmp)
                mlflow.log_artifacts(tmp, artifact_path="model")
        return run.info.run_id


def _flatten(d: dict[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out
