"""Budgeted hyperparameter search on validation, and reuse of its result while the data
keeps its shape.

`tune` runs Optuna's TPE sampler over the towers' main knobs (early stopping on the
split's validation part, trials pruned by the median rule on the per-epoch validation
NDCG), then over the ranker's main knobs against the best towers, within a time budget.
The defaults are always the first trial of each phase, so the result is never worse than
them on validation. Every trial is a nested MLflow run with its parameters and curve.

The best values are written as `--set`-style overrides with the data's shape
(`data_shape`: orders of magnitude of users, items and interactions, whether time is real,
the split mode). `apply_tuning` hands them to later training runs while the shape
matches, so a scheduled retrain does not search again every week; when the shape changes
they are ignored (and the reason recorded) until `tune` runs again.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from shortlist.config import Params
from shortlist.tracking import metric_key

FORMAT = 1

#: The towers' search space: key -> ("log"|"float"|"cat", low/choices, high).
TOWER_SPACE: dict[str, tuple] = {
    "towers.learning_rate": ("log", 1e-3, 2e-2),
    "towers.temperature": ("log", 0.02, 0.2),
    "towers.hidden_dim": ("cat", [64, 128, 256]),
    "towers.id_dropout": ("float", 0.0, 0.3),
    "towers.mixed_negatives": ("cat", [128, 256, 512, 1024]),
    "towers.history_len": ("cat", [20, 50, 100, 200]),
    "towers.history_mode": ("cat", ["causal", "leave_one_out"]),
    "towers.logq.inference_popularity_weight": ("float", 0.0, 0.8),
}
#: The ranker's search space (trained against the best towers of the first phase).
RANKER_SPACE: dict[str, tuple] = {
    "ranker.learning_rate": ("log", 1e-4, 3e-3),
    "ranker.dropout": ("float", 0.0, 0.3),
    "ranker.hard_negatives": ("cat", [20, 50, 100]),
    "ranker.hidden_dims": ("cat", ["64,32", "128,64", "256,128"]),
    "ranker.item_to_item_candidates": ("cat", [0, 50, 100]),
    "ranker.cut_points": ("cat", [1, 3]),
}


def data_shape(manifest: dict[str, Any]) -> dict[str, Any]:
    """What decides whether tuned values still fit: sizes to the nearest power of two,
    whether time is real, the split mode and (real time) the span to a power of two days."""
    counts = manifest.get("counts", {})
    rows = sum(int(counts.get(p, 0)) for p in ("train", "validation", "test"))

    def log2(n: float) -> int:
        return round(math.log2(n)) if n > 0 else 0

    shape = {
        "users_log2": log2(counts.get("users", 0)),
        "items_log2": log2(counts.get("items", 0)),
        "interactions_log2": log2(rows),
        "timestamps": manifest.get("timestamps", "real"),
        "split_mode": manifest.get("mode"),
    }
    if shape["timestamps"] == "real":
        ranges = [p.get("time_range") for p in manifest.get("parts", {}).values()]
        ranges = [r for r in ranges if r]
        if ranges:
            span_days = (max(r[1] for r in ranges) - min(r[0] for r in ranges)) / 86400
            shape["span_days_log2"] = log2(max(span_days, 1.0))
    return shape


def apply_tuning(params: Params, manifest: dict[str, Any]) -> tuple[Params, dict[str, Any]]:
    """(params with the tuned values applied, a record of what was applied and why)."""
    path = Path(params.tuning.path)
    if not params.tuning.use:
        return params, {"applied": False, "reason": "tuning.use is false"}
    if not path.exists():
        return params, {"applied": False, "reason": f"no tuning file at {path}"}
    doc = json.loads(path.read_text())
    shape = data_shape(manifest)
    if doc.get("format") != FORMAT or doc.get("data_shape") != shape:
        return params, {
            "applied": False,
            "reason": f"{path} was tuned for data of another shape "
            f"({doc.get('data_shape')} vs {shape}): run `shortlist tune` again",
        }
    values = {k: _decode(k, v) for k, v in doc["best"].items()}
    return params.with_overrides(values), {"applied": True, "path": str(path), "values": values}


def _decode(key: str, value: Any) -> Any:
    if key == "ranker.hidden_dims" and isinstance(value, str):
        return [int(x) for x in value.split(",") if x]
    return value


def _current(params: Params, key: str) -> Any:
    node: Any = params
    for part in key.split("."):
        node = getattr(node, part)
    if key == "ranker.hidden_dims":
        return ",".join(str(x) for x in node)
    return node


def _suggest(trial: Any, space: dict[str, tuple]) -> dict[str, Any]:
    out = {}
    for key, (kind, *spec) in space.items():
        if kind == "log":
            out[key] = trial.suggest_float(key, spec[0], spec[1], log=True)
        elif kind == "float":
            out[key] = trial.suggest_float(key, spec[0], spec[1])
        else:
            out[key] = trial.suggest_categorical(key, spec[0])
    return out


def _defaults(params: Params, space: dict[str, tuple]) -> dict[str, Any]:
    """The current params as a point of `space` (categoricals snapped to a choice)."""
    out = {}
    for key, (kind, *spec) in space.items():
        value = _current(params, key)
        if kind == "cat" and value not in spec[0]:
            value = spec[0][0]
        elif kind != "cat":
            value = float(min(max(value, spec[0]), spec[1]))
        out[key] = value
    if out.get("towers.history_mode") and params.towers.history_mode == "auto":
        out["towers.history_mode"] = "causal"
    return out


def tune(
    params: Params,
    split: Any,
    *,
    budget_seconds: float,
    out_path: str,
    progress: bool = False,
    log: Any = print,
) -> dict[str, Any]:
    """Search the towers' then the ranker's knobs on `split` within the budget; writes and
    returns the tuning document (best values, validation scores of defaults and best)."""
    import mlflow
    import optuna

    from shortlist.models.examples import resolve_history_mode
    from shortlist.models.fit import train_two_tower
    from shortlist.ranking.train import train_ranker
    from shortlist.tracking import start_run

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    real_time = split.manifest.get("timestamps", "real") == "real"
    base = params.with_overrides(
        {
            "towers.refit_on_validation": False,
            "towers.history_mode": resolve_history_mode(params.towers.history_mode, real_time),
        }
    )
    ranker_share = params.tuning.ranker_share
    key = f"ndcg@{params.towers.eval_k}"
    seed = params.project.seed
    best_model: dict[str, Any] = {}

    with start_run(params, run_name="tune", stage="tune") as parent:
        t0 = time.perf_counter()  # the budget is for trials, not for reaching MLflow
        towers_deadline = t0 + budget_seconds * (1.0 - ranker_share)
        deadline = t0 + budget_seconds
        mlflow.log_params(
            {"budget_seconds": budget_seconds, "ranker_share": ranker_share, "seed": seed}
        )

        def towers_objective(trial: Any) -> float:
            values = _suggest(trial, TOWER_SPACE)
            p = base.with_overrides(values)
            with mlflow.start_run(run_name=f"towers-trial-{trial.number}", nested=True):
                mlflow.log_params(values)

                def on_epoch(row: dict[str, Any]) -> None:
                    value = row.get(f"val_{key}")
                    if value is None:
                        return
                    mlflow.log_metric(metric_key(f"val_{key}"), value, step=row["epoch"])
                    trial.report(value, row["epoch"])
                    if trial.should_prune():
                        raise optuna.TrialPruned()

                model, report = train_two_tower(
                    p,
                    split.train,
                    split.validation,
                    split.items,
                    split.users,
                    seed=seed,
                    progress=progress,
                    mlflow_run=False,
                    real_time=real_time,
                    on_epoch=on_epoch,
                )
                score = float(report["validation_with_popularity"][key])
                mlflow.log_metric(metric_key(f"score_{key}"), score)
            if not best_model or score > best_model["score"]:
                best_model.update(score=score, model=model, values=values)
            log(
                f"towers trial {trial.number}: {key} {score:.4f} "
                f"(best {best_model['score']:.4f}), {time.perf_counter() - t0:.0f} s elapsed"
            )
            return score

        towers = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
        )
        towers.enqueue_trial(_defaults(base, TOWER_SPACE))
        _optimize(towers, towers_objective, towers_deadline)
        best = dict(towers.best_params)
        defaults_score = _first_value(towers)
        tuned = base.with_overrides(best)

        ranker_best: dict[str, Any] = {}
        ranker_scores: dict[str, float] = {}
        if ranker_share > 0 and len(split.validation) and time.perf_counter() < deadline:

            def ranker_objective(trial: Any) -> float:
                values = _suggest(trial, RANKER_SPACE)
                p = tuned.with_overrides({k: _decode(k, v) for k, v in values.items()})
                with mlflow.start_run(run_name=f"ranker-trial-{trial.number}", nested=True):
                    mlflow.log_params(values)
                    _, summary = train_ranker(
                        p,
                        best_model["model"],
                        split.train,
                        split.validation,
                        split.items,
                        split.users,
                        seed=seed + 1000,  # other stop users than the later ship decision
                        progress=False,
                        mlflow_run=False,
                    )
                    score = float(summary["stop_ranker"][f"ndcg@{p.ranker.eval_k}"])
                    mlflow.log_metric("score_stop_ndcg", score)
                log(f"ranker trial {trial.number}: stop NDCG {score:.4f}")
                return score

            ranker = optuna.create_study(
                direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed)
            )
            ranker.enqueue_trial(_defaults(tuned, RANKER_SPACE))
            _optimize(ranker, ranker_objective, deadline)
            ranker_best = dict(ranker.best_params)
            ranker_scores = {"defaults": _first_value(ranker), "best": float(ranker.best_value)}

        doc = {
            "format": FORMAT,
            "data_shape": data_shape(split.manifest),
            "snapshot_id": split.snapshot_id,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "budget_seconds": budget_seconds,
            "seconds": round(time.perf_counter() - t0, 1),
            "objective": f"validation {key} (towers, with the serving popularity term); "
            "held-out stop-set NDCG (ranker)",
            "best": {**best, **ranker_best},
            "towers": {
                "defaults": defaults_score,
                "best": float(towers.best_value),
                "trials": _trial_counts(towers),
            },
            "ranker": ranker_scores,
            "mlflow_run_id": parent.info.run_id,
        }
        mlflow.log_metrics(
            {"towers_defaults": defaults_score, "towers_best": float(towers.best_value)}
        )
        mlflow.log_dict(doc, "tuning.json")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(out)  # readers never see a half-written file
    return doc


def _optimize(study: Any, objective: Any, deadline: float) -> None:
    """The first trial (the defaults), then more while time is left; a trial that starts
    before the deadline runs to its end, so the budget can be overrun by one trial."""
    study.optimize(objective, n_trials=1)
    while time.perf_counter() < deadline:
        study.optimize(objective, n_trials=1)


def _first_value(study: Any) -> float:
    first = study.trials[0]
    return float(first.value) if first.value is not None else float("nan")


def _trial_counts(study: Any) -> dict[str, int]:
    states = [t.state.name.lower() for t in study.trials]
    return {s: int(np.sum([x == s for x in states])) for s in sorted(set(states))}
