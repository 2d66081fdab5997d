"""Stage `evaluate`: the model in MODEL_DIR against every baseline, on one full ranking.

Reads a split directory, evaluates the two-tower model and each baseline of
params.evaluation.baselines with `shortlist.eval.harness.evaluate` on the test part (or on
validation when the test part is empty), and writes to OUT_DIR (default MODEL_DIR/eval):
metrics.json (what `dvc metrics show` and the promotion gate read), report.md, and plots
(recall_at_k.json for `dvc plots`, PNGs). With a champion (the live model), it is a row
of every table and a line/bar of every plot, beside the challenger and the baselines.
Everything is also logged to one MLflow run.

Off-policy: when the live bundle's served lists were logged with propensities and their
engagement joined (`exposures.parquet`, landed by the feedback stage), the challenger is
also estimated on that traffic as a target policy (IPS, SNIPS, DR with intervals and the
effective sample size; `off_policy_section`), in metrics.json, blessing.json and the
report. With `evaluation.off_policy.gate` the estimate is part of the blessing once the
effective sample size reaches `evaluation.off_policy.min_ess`.

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
from shortlist.eval.off_policy import estimate_lists
from shortlist.eval.protocol import Recommender
from shortlist.eval.report import (
    off_policy_markdown,
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
    logged_path: str | None = None,
    live_bundle_id: str | None = None,
) -> dict[str, Any]:
    """Evaluate MODEL_DIR, the champion (if given) and the baselines on SPLIT_DIR, and bless.

    Returns {'table', 'metrics', 'blessing', 'out_dir'}; blessing.json (BLESSED or
    NOT_BLESSED with every reason) is written beside metrics.json. `logged_path` and
    `live_bundle_id` override where the logged traffic is read and whose it is (default:
    evaluation.off_policy.logged_path or <data.dir>/exposures.parquet, the live bundle).
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
        "block_cells": ev.block_cells,
        "sample_users": ev.sample_users or None,
        "max_cells": ev.max_cells or None,
        "seed": params.project.seed,
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
    off_policy = off_policy_section(
        params, model, seen, logged_path=logged_path, bundle_id=live_bundle_id
    )
    metrics["off_policy"] = off_policy
    verdict = bless(metrics["challenger"], metrics["baselines"], ev, champion).to_dict()
    verdict["ranker"] = ranker_decision(model_dir)
    verdict["off_policy"] = apply_off_policy_gate(verdict, off_policy, ev.off_policy)
    table += "\n\n" + off_policy_markdown(off_policy)
    table += _blessing_markdown(verdict, champion)
    table += f"\nRanker: {verdict['ranker']['reason']}\n"
    out = Path(out_dir) if out_dir else Path(model_dir) / "eval"
    _write(out, metrics, table, results)
    (out / BLESSING).write_text(json.dumps(_clean(verdict), indent=2) + "\n")
    _log_mlflow(params, metrics, results, out)
    return {"table": table, "metrics": metrics, "blessing": verdict, "out_dir": str(out)}


POLICIES_WITH_MARGINALS = ("deterministic", "explore_slots")  # propensity = P(item in list)


def read_logged(
    params: Params, path: str | None = None, bundle_id: str | None = None
) -> tuple[pd.DataFrame | None, str | None, str]:
    """(the exposures of one bundle, its id, where they were read); None when there are none.

    The bundle is `bundle_id`, else the live one (params.bundle.root's pointer), else the
    bundle with the most recent exposure."""
    from shortlist.data.io import read_table
    from shortlist.storage import open_store

    op = params.evaluation.off_policy
    where = path or op.logged_path or f"{params.data.dir.rstrip('/')}/{schema.EXPOSURES}"
    parent, _, name = where.rstrip("/").rpartition("/")
    store = open_store(parent or ".", endpoint_url=params.storage.s3_endpoint_url)
    if not store.exists(name):
        return None, None, where
    logged = read_table(store, name)
    if not len(logged):
        return None, None, where
    if bundle_id is None:
        try:
            from shortlist.bundle.slots import Slots

            pointer = Slots(params.bundle.root, endpoint_url=params.storage.s3_endpoint_url)
            bundle_id = (pointer.read_pointer() or {}).get("bundle_id")
        except Exception:  # noqa: BLE001 - no readable pointer: fall back to the newest
            bundle_id = None
        if bundle_id is None or not (logged["bundle_id"] == bundle_id).any():
            bundle_id = str(logged.sort_values("timestamp")["bundle_id"].iloc[-1])
    return logged[logged["bundle_id"] == bundle_id], bundle_id, where


def target_probabilities(
    params: Params,
    scores: np.ndarray,
    k: int,
    counts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The challenger as a target policy over one request: (catalog columns it may show,
    the probability it shows each). `scores`: its scores over the catalog, -inf where the
    user's earlier items are; `counts`: per column, interactions in the training data
    (zero = cold; low = under-exposed, as serving's popularity prior marks them)."""
    from shortlist.serving.explore import ExplorationParams, inclusion_probabilities

    op = params.evaluation.off_policy
    ep = ExplorationParams.from_serving(params.serving)
    if op.target == "deterministic":
        ep = ExplorationParams(slots=0)
    finite = int(np.isfinite(scores).sum())
    n = min(finite, k + (ep.pool if ep.slots else 0))
    top = np.argpartition(-scores, n - 1)[:n] if 0 < n < len(scores) else np.arange(n)
    top = top[np.argsort(-scores[top], kind="stable")]
    c = counts[top].astype(np.float64)
    tail = c[max(k - ep.slots, 0) : k - ep.slots + ep.pool]
    under = (c <= np.quantile(tail if len(tail) else c, ep.underexposed_quantile)) | (c == 0)
    return top, inclusion_probabilities(n, k, ep, under)


def off_policy_section(
    params: Params,
    model: Recommender,
    seen: pd.DataFrame,
    *,
    logged_path: str | None = None,
    bundle_id: str | None = None,
) -> dict[str, Any]:
    """Off-policy estimates of `model`'s reward per shown slot on the live bundle's logs.

    Uses the shown items of lists served to known users by a policy whose logged
    propensity is the probability of the item being in the list (deterministic and
    exploration slots; whole-list Plackett-Luce draws log sequential probabilities and the
    bandit Monte Carlo estimates per position, so their rows are left out, counted). For each request the challenger scores the catalog without
    the user's items from before the request and acts as `evaluation.off_policy.target`."""
    op = params.evaluation.off_policy
    if not op.enabled:
        return {"available": False, "reason": "evaluation.off_policy.enabled is false"}
    logged, bundle_id, where = read_logged(params, logged_path, bundle_id)
    if logged is None:
        return {"available": False, "reason": f"no logged traffic at {where}"}
    length = logged.groupby("request_id")["position"].max() + 1
    usable = (
        logged["user_id"].notna()
        & logged["policy"].isin(POLICIES_WITH_MARGINALS)
        & (logged["propensity"] > 0)
        & (logged["propensity"] <= 1)
    )
    left_out = {
        "anonymous": int(logged["user_id"].isna().sum()),
        "other_policy": int((~logged["policy"].isin(POLICIES_WITH_MARGINALS)).sum()),
    }
    rows = logged[usable].reset_index(drop=True)
    if not len(rows):
        return {
            "available": False,
            "reason": f"no usable logged rows of bundle {bundle_id} at {where}",
            "left_out": left_out,
        }
    rows = rows.assign(
        list_length=rows["request_id"].map(length).astype(np.int64),
        reward=(rows["weight"] if op.reward == "weight" else rows["engaged"]).astype(float),
    )
    catalog = np.asarray(model.item_ids).astype(str)
    col = pd.Series(np.arange(len(catalog)), index=catalog)
    counts = np.zeros(len(catalog))
    seen_cols = col.reindex(seen[schema.ITEM_ID].astype(str)).to_numpy()
    ok = ~np.isnan(seen_cols)
    np.add.at(counts, seen_cols[ok].astype(np.int64), 1.0)
    before = seen.assign(_col=seen_cols)[ok]
    by_user = {u: g for u, g in before.groupby(before[schema.USER_ID].astype(str))}
    target = np.zeros(len(rows))
    target_lists: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rows_of = {u: g for u, g in rows.groupby(rows["user_id"].astype(str))}
    users = list(rows_of)
    # Users scored per block: at most evaluation.block_cells score cells at a time.
    block = max(1, min(256, params.evaluation.block_cells // max(len(catalog), 1)))
    for b in range(0, len(users), block):
        ids = users[b : b + block]
        scores = np.asarray(model.score(ids))
        for u, user_scores in zip(ids, scores, strict=True):
            history = by_user.get(u)
            for rid, req in rows_of[u].groupby("request_id"):
                s = user_scores.astype(np.float64)
                if history is not None:
                    earlier = history[history[schema.TIMESTAMP] < req[schema.TIMESTAMP].min()]
                    s[earlier["_col"].to_numpy(dtype=np.int64)] = -np.inf
                cols, probs = target_probabilities(
                    params, s, int(req["list_length"].iloc[0]), counts
                )
                prob_of = dict(zip(catalog[cols], probs, strict=True))
                target[req.index] = [prob_of.get(i, 0.0) for i in req["item_id"].astype(str)]
                target_lists[str(rid)] = (catalog[cols], probs)
    estimates = estimate_lists(
        rows,
        target,
        target_lists,
        confidence=op.confidence,
        clip=op.clip or None,
    )
    return {
        "available": True,
        "bundle_id": bundle_id,
        "source": where,
        "target": op.target,
        "reward": op.reward,
        "left_out": left_out,
        **estimates,
    }


def apply_off_policy_gate(
    verdict: dict[str, Any], section: dict[str, Any], op: Any
) -> dict[str, Any]:
    """With evaluation.off_policy.gate, refuse a challenger whose estimate falls below the
    logged policy's reward x (1 + min_lift) once the effective sample size reaches min_ess.
    Adds its reason to `verdict` (and unblesses it); returns the gate's record."""
    record: dict[str, Any] = {"gate": op.gate, "available": bool(section.get("available"))}
    if not section.get("available"):
        record["reason"] = section.get("reason")
        return record
    est = section["estimates"][op.estimator]
    logged = section["logged_reward"]["value"]
    needed = logged * (1 + op.min_lift)
    ess = est["effective_sample_size"]
    record.update(
        estimator=op.estimator,
        value=est["value"],
        ci=[est["ci_low"], est["ci_high"]],
        effective_sample_size=ess,
        logged_reward=logged,
        threshold=needed,
    )
    text = (
        f"off-policy {op.estimator} {est['value']:.4f} "
        f"[{est['ci_low']:.4f}, {est['ci_high']:.4f}] vs logged reward {logged:.4f}, "
        f"threshold {needed:.4f}, ESS {ess:.0f}"
    )
    if not op.gate:
        record["passed"] = None
        return record
    if ess < op.min_ess:
        record["passed"] = None
        verdict["reasons"].append(
            f"off-policy gate skipped: {text} < evaluation.off_policy.min_ess {op.min_ess:g}"
        )
        return record
    record["passed"] = bool(est["value"] >= needed)
    if record["passed"]:
        verdict["reasons"].append(f"passes the off-policy gate: {text}")
    else:
        verdict["blessed"] = False
        verdict["verdict"] = "NOT_BLESSED"
        verdict["reasons"].append(f"fails the off-policy gate: {text}")
    return record


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
        off_policy = metrics.get("off_policy") or {}
        for name, est in (off_policy.get("estimates") or {}).items():
            values = {
                metric_key(f"off_policy/{name}/{field}"): float(est[field])
                for field in ("value", "ci_low", "ci_high", "effective_sample_size")
                if est[field] is not None and np.isfinite(est[field])
            }
            mlflow.log_metrics(values)
        for name, tuning in metrics["baseline_tuning"].items():
            mlflow.log_params({f"{name}.{k}": v for k, v in tuning["best"].items()})
        mlflow.log_artifacts(str(out), artifact_path="eval")
        return run
