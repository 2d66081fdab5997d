"""Retrieval quality on MovieLens 100K: the two-tower model against the four baselines.

Protocol: every rating is an implicit positive; per user with >= 5 interactions the last
floor(20%) by (timestamp, item_id) is test, the rest train; the last floor(10%) of each
user's train is validation, used only to tune the baselines' grids and to stop the
two-tower early (then every model refits on all of train; the towers retrain from scratch
for the early-stopping epoch count when towers.refit_on_validation is on). Full ranking over the items
seen in train, each user's train items excluded (shortlist.eval.harness).

Cold items: 10% of the catalog's items (seeded) lose all their train interactions; the
test interactions on them are ranked among the cold items only, so only content features
can place them. Compared with a random ranking of the cold items, whose expected
Recall@K is exactly min(K, n_cold) / n_cold for every user.

    .venv/bin/python benchmarks/retrieval_quality.py [--data DIR] [--seeds 3] [--no-two-tower]

Writes benchmarks/results/retrieval_quality.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

if __package__:  # imported as benchmarks.<name>
    from .provenance import provenance
else:  # run as a script: benchmarks/ is sys.path[0]
    from provenance import provenance

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("SHORTLIST_ML100K", REPO.parent / "shared/datasets/ml-100k"))
RESULTS = REPO / "benchmarks" / "results"
KS = [10, 20, 50, 200]
COLD_FRACTION = 0.1
SECTIONS = ["baselines", "logq", "no_logq", "cold"]
#: Measured independently on this protocol (recall there is hits / min(|rel|, K)).
REFERENCE = {
    "ease": {"capped_recall@20": 0.235, "ndcg@20": 0.205, "recall@200": 0.700},
    "most_popular": {"capped_recall@20": 0.122},
}
COLUMNS = [
    ("recall@20", "Recall@20"),
    ("capped_recall@20", "capped R@20"),
    ("ndcg@20", "NDCG@20"),
    ("recall@200", "Recall@200"),
    ("mrr", "MRR"),
    ("coverage@20", "cov@20"),
    ("popularity_percentile@20", "pop pct@20"),
]


def load(data_dir: Path):
    from shortlist.data.movielens import load_ml100k

    interactions, items, users = load_ml100k(data_dir)
    return interactions, items, users


def protocol(interactions: pd.DataFrame):
    from shortlist.eval.harness import holdout_last

    train, test = holdout_last(interactions, 0.2, min_interactions=5)
    fit_part, validation = holdout_last(train, 0.1, min_interactions=5)
    return train, test, fit_part, validation


def run_baselines(params, data, catalog, progress=print) -> dict[str, Any]:
    from shortlist.eval.baselines import make_baseline
    from shortlist.eval.harness import evaluate

    train, test, fit_part, validation, items, users = data
    out = {}
    for name in params.evaluation.baselines:
        t0 = time.perf_counter()
        model = make_baseline(name, params).fit(fit_part, validation, items, users)
        fit_s = time.perf_counter() - t0
        res = evaluate(model, train, test, items, ks=KS, catalog=catalog)
        out[name] = {
            "metrics": res["segments"]["all"],
            "segments": res["segments"],
            "best_params": model.best_params,
            "tuning": model.tuning,
            "fit_seconds": round(fit_s, 1),
        }
        progress(f"  {name}: {_brief(out[name]['metrics'])} {model.best_params} ({fit_s:.0f}s)")
    return out


def make_two_tower(params, seed: int):
    """The two-tower Recommender, configured from params (adapt here if its API moves)."""
    from shortlist.models.recommender import TwoTowerRecommender

    return TwoTowerRecommender(params, seed=seed)


def pop_weight(params) -> float:
    """The inference popularity weight to compare against none: params' value, else 1.0."""
    return params.towers.logq.inference_popularity_weight or 1.0


def with_pop_weight(rec, params, weight: float):
    """The same trained towers scored with another inference popularity weight."""
    from shortlist.models.recommender import TwoTowerRecommender

    rec.model.meta["inference_popularity_weight"] = weight
    return TwoTowerRecommender.from_model(
        params, rec.model, rec.interactions, rec.items, rec.users, name=rec.name
    )


def run_two_tower(params, data, catalog, seeds, logq: bool, progress=print) -> dict[str, Any]:
    """Train the towers per seed (logQ on or off); evaluate each with and without the
    inference popularity term. Returns {label: per-run metrics plus mean and std}."""
    from shortlist.eval.harness import evaluate

    train, test, fit_part, validation, items, users = data
    vp = params.with_overrides({"towers.logq.enabled": logq})
    w = pop_weight(params)
    base = "two_tower (logQ)" if logq else "two_tower (no logQ)"
    labels = {0.0: base, w: f"{base[:-1]} + inference pop w={w:g})"}
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in labels.values()}
    for seed in seeds:
        t0 = time.perf_counter()
        model = make_two_tower(vp, seed).fit(fit_part, validation, items, users)
        fit_s = time.perf_counter() - t0
        report = model.report
        for weight, label in labels.items():
            res = evaluate(
                with_pop_weight(model, vp, weight), train, test, items, ks=KS, catalog=catalog
            )
            key = "validation_with_popularity" if weight else "validation"
            runs[label].append(
                {
                    "seed": seed,
                    "metrics": res["segments"]["all"],
                    # The model's own validation numbers (what early stopping saw); the
                    # popularity variant's come from the params weight at training time.
                    "validation": report.get(key, {})
                    if weight in (0.0, vp.towers.logq.inference_popularity_weight)
                    else {},
                    "best_epoch": report.get("best_epoch"),
                    "epochs_run": report.get("epochs_run"),
                    "refit_epochs": (report.get("refit") or {}).get("epochs", 0),
                    "train_seconds": report.get("timings", {}).get("train_seconds"),
                    "fit_seconds": round(fit_s, 1),
                }
            )
            progress(f"  {label} seed {seed}: {_brief(runs[label][-1]['metrics'])} ({fit_s:.0f}s)")
    out = {}
    for label, rs in runs.items():
        out[label] = {"runs": rs, **_mean_std([r["metrics"] for r in rs])}
        out[label]["validation"] = _mean_std([r["validation"] for r in rs if r["validation"]])
    return out


def cold_split(data, seed: int):
    """Remove 10% of the catalog's items from train and validation entirely."""
    train, test, fit_part, validation, items, users = data
    catalog = np.unique(train["item_id"].astype(str))
    rng = np.random.default_rng(seed)
    cold = np.sort(rng.choice(catalog, int(round(COLD_FRACTION * len(catalog))), replace=False))

    def warm(df):
        return df[~df["item_id"].astype(str).isin(cold)].reset_index(drop=True)

    return (warm(train), test, warm(fit_part), warm(validation), items, users), catalog, cold


def run_cold(params, data, seeds, two_tower: bool, progress=print) -> dict[str, Any]:
    from shortlist.eval.harness import evaluate

    cdata, catalog, cold = cold_split(data, params.project.seed)
    train, test, fit_part, validation, items, users = cdata
    n_cold = len(cold)
    cold_test = test[test["item_id"].astype(str).isin(cold)]
    out: dict[str, Any] = {
        "cold_items": n_cold,
        "catalog": len(catalog),
        "cold_test_interactions": len(cold_test),
        "cold_test_users": int(cold_test["user_id"].nunique()),
        "random": {f"recall@{k}": min(k, n_cold) / n_cold for k in KS},
        "models": {},
    }
    progress(f"  random among {n_cold} cold items: recall@20 {out['random']['recall@20']:.4f}")
    if not two_tower:
        return out
    runs = []
    for seed in seeds:
        model = make_two_tower(params, seed).fit(fit_part, validation, items, users)
        res = evaluate(
            model,
            train,
            test,
            items,
            ks=KS,
            catalog=catalog,
            cold_items=cold,
            segments=["cold_items", "cold_items_in_catalog", "all"],
        )
        runs.append({"seed": seed, "segments": res["segments"]})
        progress(
            f"  two_tower seed {seed}: cold recall@20 "
            f"{res['segments']['cold_items'].get('recall@20', 0):.4f}"
        )
    out["models"]["two_tower"] = {
        "runs": runs,
        **_mean_std([r["segments"]["cold_items"] for r in runs]),
        "in_catalog": _mean_std([r["segments"]["cold_items_in_catalog"] for r in runs]),
    }
    return out


def _mean_std(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    if not rows:
        return {}
    keys = [k for k, v in rows[0].items() if k != "users" and isinstance(v, int | float)]
    return {
        "mean": {k: float(np.mean([r[k] for r in rows])) for k in keys},
        "std": {k: float(np.std([r[k] for r in rows])) for k in keys},
    }


def _brief(m: dict[str, float]) -> str:
    return " ".join(f"{k}={m[k]:.4f}" for k in ("recall@20", "ndcg@20", "recall@200") if k in m)


def _cell(key: str, mean: float, std: float | None = None) -> str:
    fmt = "{:.1f}" if key.startswith("popularity") else "{:.4f}"
    text = fmt.format(mean)
    return text if std is None else f"{text} ± {fmt.format(std)}"


def markdown(result: dict[str, Any]) -> str:
    head = "| model | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [head, "|---|" + "---:|" * len(COLUMNS)]
    for label, tt in result.get("two_tower", {}).items():
        n = len(tt["runs"])
        cells = [_cell(k, tt["mean"][k], tt["std"][k] if n > 1 else None) for k, _ in COLUMNS]
        lines.append(f"| {label}, {n} seed{'s' if n > 1 else ''} | " + " | ".join(cells) + " |")
    for name, b in result.get("baselines", {}).items():
        lines.append(
            f"| {name} | " + " | ".join(_cell(k, b["metrics"][k]) for k, _ in COLUMNS) + " |"
        )
    for name, ref in REFERENCE.items():
        cells = [_cell(k, ref[k]) if k in ref else "" for k, _ in COLUMNS]
        lines.append(f"| reference: {name} | " + " | ".join(cells) + " |")
    logq_lines = []
    if result.get("two_tower"):
        logq_lines = [
            "",
            "logQ correction (validation recall@20 is the model's own early-stopping number "
            "on the validation split: the variant to keep is chosen there, never on test):",
            "",
            "| variant | validation recall@20 | Recall@20 | Recall@200 | pop pct@20 |",
            "|---|---:|---:|---:|---:|",
        ]
        for label, tt in result["two_tower"].items():
            val = tt.get("validation", {}).get("mean", {}).get("recall@20")
            val_text = "–" if val is None else f"{val:.4f}"
            logq_lines.append(
                f"| {label} | {val_text} | {_cell('r', tt['mean']['recall@20'], tt['std']['recall@20'])}"
                f" | {_cell('r', tt['mean']['recall@200'], tt['std']['recall@200'])}"
                f" | {_cell('popularity', tt['mean']['popularity_percentile@20'])} |"
            )
    cold_lines: list[str] = []
    cold = result.get("cold")
    if cold:
        cold_lines += [
            "",
            f"Cold items: {cold['cold_items']} of {cold['catalog']} items held out of training "
            f"({cold['cold_test_interactions']} test interactions, {cold['cold_test_users']} users); "
            "ranked among the cold items only.",
            "",
            "| model | Recall@20 among cold items | Recall@200 among cold items |",
            "|---|---:|---:|",
        ]
        for name, m in cold["models"].items():
            cold_lines.append(
                f"| {name}, {len(m['runs'])} seed{'s' if len(m['runs']) > 1 else ''}"
                f" | {_cell('r', m['mean']['recall@20'], m['std']['recall@20'])}"
                f" | {_cell('r', m['mean']['recall@200'], m['std']['recall@200'])} |"
            )
        rnd = cold["random"]
        cold_lines.append(
            f"| random among cold items (exact) | {rnd['recall@20']:.4f} | {rnd['recall@200']:.4f} |"
        )
    if not result.get("complete"):
        notes_head = ["", "PARTIAL RUN: some sections did not finish."]
    else:
        notes_head = []
    notes = notes_head + [
        "",
        f"Data: {result['data']['interactions']} interactions, {result['data']['users']} users, "
        f"catalog {result['data']['catalog']} train items; {result['data']['test']} test "
        f"interactions. Recall@K = hits / |relevant|; capped R@K = hits / min(|relevant|, K) "
        "(the reference rows were measured with the capped form). Full ranking, train items "
        "excluded; pop pct = mean train-popularity percentile of the top 20 (100 = most popular).",
        "",
        f"Reproduce: `{result['command']}`",
    ]
    return "\n".join(lines + logq_lines + cold_lines + notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--no-two-tower", action="store_true", help="baselines only")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--section",
        choices=["all", *SECTIONS],
        default="all",
        help="run one part only (parallel runs), then combine them with --merge",
    )
    parser.add_argument(
        "--seed-list", default="", help="explicit seeds, e.g. 43,44 (parallel runs)"
    )
    parser.add_argument("--merge", action="store_true", help="combine raw/ section results")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.out, argv)

    from shortlist.config import load_params

    params = load_params(REPO / "params.yaml", args.overrides)
    interactions, items, users = load(args.data)
    train, test, fit_part, validation = protocol(interactions)
    data = (train, test, fit_part, validation, items, users)
    catalog = np.unique(train["item_id"].astype(str))
    seeds = [params.project.seed + s for s in range(args.seeds)]
    tag = args.section
    if args.seed_list:
        seeds = [int(x) for x in args.seed_list.split(",")]
        tag = f"{args.section}.s{'-'.join(map(str, seeds))}"
    command = (
        "python benchmarks/retrieval_quality.py"
        + "".join(f" --set {o}" for o in args.overrides)
        + (" --no-two-tower" if args.no_two_tower else "")
        + (f" --seeds {args.seeds}" if args.seeds != 3 else "")
    )
    print(f"ml-100k: {len(train)} train / {len(test)} test, catalog {len(catalog)}")
    result: dict[str, Any] = {
        "_t0": time.perf_counter(),
        "benchmark": "retrieval_quality",
        "complete": False,
        "command": command,
        "data": {
            "dataset": "MovieLens 100K",
            "interactions": len(interactions),
            "users": int(interactions["user_id"].nunique()),
            "catalog": len(catalog),
            "train": len(train),
            "fit": len(fit_part),
            "validation": len(validation),
            "test": len(test),
        },
        "protocol": __doc__.split("\n\n")[1].replace("\n", " "),
        "provenance": provenance(__file__, argv),  # commit, CPU, probe, load at start
        "reference": REFERENCE,
    }
    sections = SECTIONS if args.section == "all" else [args.section]
    if "baselines" in sections:
        print("baselines:")
        result["baselines"] = run_baselines(params, data, catalog)
    for section, logq in (("logq", True), ("no_logq", False)):
        if section in sections and not args.no_two_tower:
            print(f"two-tower ({section}):")
            result.setdefault("two_tower", {}).update(
                run_two_tower(params, data, catalog, seeds, logq=logq)
            )
            write(result, args.out, tag)
    if "cold" in sections:
        print("cold items:")
        result["cold"] = run_cold(params, data, seeds, two_tower=not args.no_two_tower)
    if args.section == "all":
        result["complete"] = True
    table = write(result, args.out, tag)
    print()
    print(table)
    return 0


def merge(out: Path, argv: list[str] | None = None) -> int:
    """Combine the results of parallel section runs (raw/*.json) into the final files:
    baselines from their run, two-tower and cold runs pooled per label across seeds."""
    parts = [
        json.loads(p.read_text()) for p in sorted((out / "raw").glob("retrieval_quality.*.json"))
    ]
    if not parts:
        raise SystemExit(f"nothing to merge in {out / 'raw'}")
    result = {k: v for k, v in parts[0].items() if k not in ("two_tower", "cold", "baselines")}
    tt_runs: dict[str, list[dict[str, Any]]] = {}
    cold_runs: list[dict[str, Any]] = []
    for part in parts:
        if "baselines" in part:
            result["baselines"] = part["baselines"]
        for label, entry in part.get("two_tower", {}).items():
            tt_runs.setdefault(label, []).extend(entry["runs"])
        if "cold" in part:
            result["cold"] = {**part["cold"], "models": {}}
            cold_runs.extend(part["cold"].get("models", {}).get("two_tower", {}).get("runs", []))
        result["seconds"] = max(result["seconds"], part["seconds"])
    result["two_tower"] = {}
    for label in sorted(tt_runs, key=lambda x: ("no logQ" in x, x)):
        rs = sorted(tt_runs[label], key=lambda r: r["seed"])
        result["two_tower"][label] = {
            "runs": rs,
            **_mean_std([r["metrics"] for r in rs]),
            "validation": _mean_std([r["validation"] for r in rs if r["validation"]]),
        }
    if cold_runs and "cold" in result:
        cold_runs.sort(key=lambda r: r["seed"])
        result["cold"]["models"]["two_tower"] = {
            "runs": cold_runs,
            **_mean_std([r["segments"]["cold_items"] for r in cold_runs]),
            "in_catalog": _mean_std([r["segments"]["cold_items_in_catalog"] for r in cold_runs]),
        }
    result["complete"] = "baselines" in result and "cold" in result and bool(tt_runs)
    result["command"] = result["command"].split(" --section")[0].split(" --seed-list")[0]
    result["parallel_parts"] = len(parts)
    result["parts_provenance"] = [p.get("provenance") for p in parts]
    result["provenance"] = provenance(__file__, argv)
    result["_t0"] = time.perf_counter() - result["seconds"]
    print(write(result, out, "all", keep_times=True))
    return 0


def write(result: dict[str, Any], out: Path, section: str, keep_times: bool = False) -> str:
    """Write the JSON and markdown results (also for a partial run); returns the table.

    A single section (for parallel runs) goes to raw/ for `--merge`."""
    if not keep_times:
        result["seconds"] = round(time.perf_counter() - result["_t0"], 1)
        result["cpu_seconds"] = round(time.process_time(), 1)
        result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    table = markdown(result)
    doc = {k: v for k, v in result.items() if not k.startswith("_")}
    if section != "all":
        (out / "raw").mkdir(parents=True, exist_ok=True)
        path = out / "raw" / f"retrieval_quality.{section}.json"
        path.write_text(json.dumps(doc, indent=2, default=_json) + "\n")
        return table
    out.mkdir(parents=True, exist_ok=True)
    (out / "retrieval_quality.json").write_text(json.dumps(doc, indent=2, default=_json) + "\n")
    (out / "retrieval_quality.md").write_text(
        "# Retrieval quality (MovieLens 100K)\n\n" + table + "\n"
    )
    return table


def _json(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    sys.exit(main())
