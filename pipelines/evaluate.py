"""Stage `evaluate`: the model in MODEL_DIR against every baseline, on one full ranking.

Reads a split directory, evaluates the two-tower model and each baseline of
params.evaluation.baselines with `shortlist.eval.harness.evaluate` on the test part (or on
validation when the test part is empty), and writes to OUT_DIR (default MODEL_DIR/eval):
metrics.json (what `dvc metrics show` and the promotion gate read), report.md, and plots
(recall_at_k.json for `dvc plots`, PNGs). With a champion (the live model), it is a row
of every table and a line/bar of every plot, beside the challenger and the baselines.
Everything is also logged to one MLflow run.

Baselines tune on validation and refit on train + validation before a test evaluation.
When validation itself is the evaluated part, they still tune on it but fit on train only:
that flatters the baselines, which only makes the gate stricter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shortlist.blessing import bless
from shortlist.config import Params
from shortlist.data import schema
from shortlist.data.split_io import Split, load_split
from shortlist.eval.baselines import make_baseline
from shortlist.eval.harness import evaluate, flatten
from shortlist.eval.protocol import Recommender
from shortlist.eval.report import (
    plot_recall_curve,
    plot_segments,
    recall_curve_rows,
    report_markdown,
)
from shortlist.tracking import metric_key

METRICS = "metrics.json"
BLESSING = "blessing.json"
REPORT = "report.md"
CURVE = "plots/recall_at_k.json"
CHAMPION = "champion"  # the live model's row in the report, plots and MLflow metrics


def load_model(model_dir: str, params: Params, split: Split, seen: pd.DataFrame) -> Recommender:
    """The two-tower model of MODEL_DIR as a Recommender ready to score.

    `seen` is every interaction known before the evaluated period: the model builds user
    histories from it. Kept small on purpose: the one place to adapt to the model's API.
    """
    from shortlist.models.recommender import TwoTowerRecommender

    return TwoTowerRecommender.from_model_dir(
        model_dir, params, interactions=seen, items=split.items, users=split.users
    )


def run(
    params: Params,
    *,
    model_dir: str,
    split_dir: str,
    out_dir: str | None = None,
    champion_dir: str | None = None,
) -> dict[str, Any]:
    """Evaluate MODEL_DIR, the champion (if given) and the baselines on SPLIT_DIR, and bless.

    Returns {'table', 'metrics', 'blessing', 'out_dir'}; blessing.json (BLESSED or
    NOT_BLESSED with every reason) is written beside metrics.json.
    """
    ev = params.evaluation
    split = load_split(str(split_dir))
    part = "test" if len(split.test) else "validation"
    if part == "validation" and not len(split.validation):
        raise ValueError(f"{split_dir}: both test and validation are empty: nothing to evaluate")
    target = split.test if part == "test" else split.validation
    seen = (
        pd.concat([split.train, split.validation], ignore_index=True)
        if part == "test"
        else split.train
    )
    catalog = np.union1d(
        split.items[schema.ITEM_ID].astype(str).to_numpy(),
        split.train[schema.ITEM_ID].astype(str).to_numpy(),
    )
    common = {
        "ks": ev.ks,
        "catalog": catalog,
        "heavy_user_quantile": ev.heavy_user_quantile,
        "batch_users": ev.batch_users or None,
        "progress": True,
    }

    model = load_model(str(model_dir), params, split, seen)
    results = {model.name: evaluate(model, seen, target, split.items, **common)}
    champion = None
    if champion_dir is not None:  # beside the challenger in every table and plot
        live = load_model(str(champion_dir), params, split, seen)
        results[CHAMPION] = evaluate(live, seen, target, split.items, **common)
        champion = _all_segment(results[CHAMPION])
    tuned: dict[str, dict[str, Any]] = {}
    for name in ev.baselines:
        base = make_baseline(name, params)
        base.refit_on_validation = part == "test"
        base.fit(split.train, split.validation, split.items, split.users)
        results[name] = evaluate(base, seen, target, split.items, **common)
        tuned[name] = {"best": base.best_params, "grid": base.tuning}

    table = report_markdown(results, title=f"Retrieval evaluation ({part} part)")
    metrics = {
        "eval_part": part,
        "snapshot_id": split.snapshot_id,
        "model": model.name,
        "primary_metric": ev.primary_metric,
        "challenger": _all_segment(results[model.name]),
        "baselines": {
            n: _all_segment(r) for n, r in results.items() if n not in (model.name, CHAMPION)
        },
        "champion": champion,
        "results": results,
        "baseline_tuning": tuned,
    }
    verdict = bless(metrics["challenger"], metrics["baselines"], ev, champion).to_dict()
    verdict["ranker"] = ranker_decision(model_dir)
    table += _blessing_markdown(verdict, champion)
    table += f"\nRanker: {verdict['ranker']['reason']}\n"
    out = Path(out_dir) if out_dir else Path(model_dir) / "eval"
    _write(out, metrics, table, results)
    (out / BLESSING).write_text(json.dumps(_clean(verdict), indent=2) + "\n")
    _log_mlflow(params, metrics, results, out)
    return {"table": table, "metrics": metrics, "blessing": verdict, "out_dir": str(out)}


def ranker_decision(model_dir: str) -> dict[str, Any]:
    """Whether the bundle built from MODEL_DIR will rank with a ranker, and why (from the
    ranker stage's record: it ships only when it beats the retrieval order on validation)."""
    path = Path(model_dir) / "ranker_metrics.json"
    if not path.exists():
        return {"shipped": False, "reason": "no ranker was trained: the retrieval order serves"}
    record = json.loads(path.read_text())
    decision = record.get("decision") or {}
    shipped = bool(record.get("shipped", True))
    return {
        "shipped": shipped,
        "reason": decision.get("reason", "ranker trained (no decision recorded)"),
        "gain": decision.get("gain"),
        "relative_gain": decision.get("relative_gain"),
    }


def _blessing_markdown(verdict: dict[str, Any], champion: dict[str, float] | None) -> str:
    metric = verdict["metric"]
    lines = ["", f"**{verdict['verdict']}** on `{metric}`", ""]
    if champion is not None:
        lines.append(f"Champion {metric}: {champion.get(metric, float('nan')):.4f}")
        lines.append("")
    lines += [f"- {reason}" for reason in verdict["reasons"]]
    return "\n".join(lines)


def _all_segment(result: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in result["segments"]["all"].items() if k != "users"}


def _write(out: Path, metrics: dict[str, Any], table: str, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS).write_text(json.dumps(_clean(metrics), indent=2) + "\n")
    (out / REPORT).write_text(table + "\n")
    (out / CURVE).parent.mkdir(parents=True, exist_ok=True)
    (out / CURVE).write_text(json.dumps(recall_curve_rows(results), indent=2) + "\n")
    plot_recall_curve(results, out / "plots" / "recall_at_k.png")
    plot_segments(results, out / "plots" / "segments.png")


def _clean(o: Any) -> Any:
    """Strict JSON: numpy scalars as Python numbers, NaN/inf as null."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not np.isfinite(o):
        return None
    return o


def _log_mlflow(params: Params, metrics: dict[str, Any], results: dict[str, Any], out: Path):
    from shortlist.tracking import start_run

    tags = {"snapshot_id": metrics["snapshot_id"], "eval_part": metrics["eval_part"]}
    with start_run(params, f"evaluate {metrics['model']}", "evaluate", tags) as run:
        import mlflow

        for name, res in results.items():
            flat = {metric_key(f"{name}/{k}"): v for k, v in flatten(res).items() if np.isfinite(v)}
            mlflow.log_metrics(flat)
        for name, tuning in metrics["baseline_tuning"].items():
            mlflow.log_params({f"{name}.{k}": v for k, v in tuning["best"].items()})
        mlflow.log_artifacts(str(out), artifact_path="eval")
        return run
