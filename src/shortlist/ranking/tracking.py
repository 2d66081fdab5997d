"""The ranker's MLflow run: its params, each epoch's metrics, the ship decision, the
item-item blend's choice and the curves plot. Every function logs to the active run."""

from __future__ import annotations

import contextlib
from typing import Any

from shortlist.config import Params, RankerParams
from shortlist.ranking.decision import RankerDecision
from shortlist.tracking import metric_key


def ranker_run(params: Params, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """The ranker's MLflow run, or a context that yields None when logging is off."""
    if not enabled:
        return contextlib.nullcontext()
    from shortlist.tracking import start_run

    return start_run(params, run_name="ranker", stage="train_ranker")


def log_start(rp: RankerParams, seed: int, requests: int, users: int, towers: str) -> None:
    import mlflow

    mlflow.log_params({f"ranker.{k}": v for k, v in rp.model_dump().items()})
    mlflow.log_params(
        {"seed": seed, "requests": requests, "users": users, "tower_fingerprint": towers}
    )


def epoch_logger(prefix: str):
    """An `on_epoch` callback logging each epoch's row as MLflow metrics under `prefix`."""

    def log_epoch(row: dict[str, Any]) -> None:
        import mlflow

        mlflow.log_metrics(
            {prefix + metric_key(k): v for k, v in row.items() if k != "epoch"},
            step=row["epoch"],
        )

    return log_epoch


def log_result(
    final: dict[str, float],
    baseline: dict[str, float],
    decision: RankerDecision,
    head: dict[str, Any],
    eval_k: int,
) -> None:
    """Stop-set metrics, the ship decision and the first member's curves."""
    import matplotlib.pyplot as plt
    import mlflow

    from shortlist.models.reporting import plot_curves

    mlflow.log_metrics({metric_key(f"stop_ranker_{k}"): v for k, v in final.items()})
    mlflow.log_metrics({metric_key(f"stop_retrieval_{k}"): v for k, v in baseline.items()})
    mlflow.set_tags(
        {"ranker.shipped": str(decision.shipped).lower(), "ranker.decision": decision.reason}
    )
    mlflow.log_metrics({"ranker_gain": decision.gain, "ranker_gain_stderr": decision.stderr})
    key = f"ndcg@{eval_k}"
    fig = plot_curves(
        head["history"],
        [key],
        loss_label="weighted logistic loss (fit)",
        metric_label=f"held-out NDCG@{eval_k}",
        best_epoch=head["best_epoch"],
        reference={"retrieval order": head["stop_retrieval_only"][key]},
    )
    mlflow.log_figure(fig, "ranker_curves.png")
    plt.close(fig)


def log_blend(blended: dict[str, Any] | None, order: str) -> None:
    import mlflow

    mlflow.set_tag("ranker.order", order)
    if blended is not None:
        d = blended["decision"]
        mlflow.set_tag("blend.decision", d.reason)
        mlflow.log_metrics(
            {"blend_weight": blended["weight"], "blend_gain": d.gain, "blend_gain_stderr": d.stderr}
        )
