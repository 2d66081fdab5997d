"""Funnel quality on ml-100k: does the ranker earn its place on top of retrieval?

Protocol (the retrieval benchmark's): every rating is an implicit positive; per user with
>= 5 interactions the last 20% by (timestamp, item_id) is test, the rest is train; full
ranking over the items seen in train, each user's train items excluded. Inside train the
last 10% per user is the validation part: the towers fit on the rest and stop early on it,
the ranker fits on it (towers did not memorise it) and stops early on a held-out 20% of its
users. Nothing is tuned on test.

Per seed: train the towers (early-stopped on validation, no refit on it: the ranker
trains there), train the ranker with the configured feature groups (`ranker.feature_groups`),
and on the first `--ablation-seeds` seeds once more with all groups and without each
group, then evaluate on test with the eval harness. The ablation table carries each
variant's NDCG@20 on the ranker's own stop set (validation users): the configured groups
were chosen there, never on test.

- retrieval-only: the towers' order of the top-N candidates (candidate recall@N = its
  Recall@N: what the ranker can possibly recover);
- funnel: the same candidates ordered by the ranker;
- as served: production trains the ranker against the early-stopped towers and serves it
  beside the towers refitted on train + validation (`pipelines/train_ranker.py`), so each
  seed also refits the towers and scores retrieval-only and funnel with those, the
  ranker unchanged (skipped with --towers or towers.refit_on_validation=false);
- EASE and ALS baselines (tuned on validation, refit on train), once.

Test requests happen at each user's first test timestamp; features come from train
interactions strictly before it. Prints a table and writes
benchmarks/results/funnel_quality.json.

    .venv/bin/python benchmarks/funnel_quality.py [--seeds 0 1 2] [--no-ablation]
"""

from __future__ import annotations

import argparse
import json
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
KS = (10, 20, 200)
DEFAULT = "default"  # the variant with params.ranker.feature_groups: the headline funnel
METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "recall@200")


def protocol(interactions: pd.DataFrame):
    from shortlist.eval.harness import holdout_last

    train, test = holdout_last(interactions, 0.2, min_interactions=5)
    fit_part, validation = holdout_last(train, 0.1, min_interactions=5)
    return train, test, fit_part, validation


def evaluate_funnel(params, towers, ranker, train, test, items, users, catalog) -> dict[str, Any]:
    """Test metrics of retrieval-only order and of the ranker's order of the same candidates."""
    from shortlist.data import schema
    from shortlist.eval.harness import evaluate
    from shortlist.ranking.candidates import Retrieval
    from shortlist.ranking.event_log import EventLog
    from shortlist.ranking.funnel import FixedScores, catalog_scores, requests_at, rerank

    first = test.groupby(test[schema.USER_ID].astype(str))[schema.TIMESTAMP].min()
    user_ids = list(first.index)
    index = ranker.space.item_index()
    reqs = requests_at(user_ids, first.to_numpy(), train, index)
    log = EventLog(train, index)
    retrieval = Retrieval(towers, items, catalog, users, params)
    ex, ranked = rerank(ranker, retrieval, log, reqs, params.ranker.candidates)
    n = ranker.space.n_items
    out = {}
    for name, row_scores in (("retrieval_only", ex.retrieval), ("funnel", ranked)):
        rec = FixedScores(name, catalog, user_ids, catalog_scores(ex, row_scores, n))
        res = evaluate(rec, train, test, items, ks=KS, catalog=catalog)
        out[name] = {k: float(v) for k, v in res["segments"]["all"].items() if k in METRICS}
        out[name]["segments"] = {
            s: {k: float(v) for k, v in m.items() if k in ("recall@20", "ndcg@20", "users")}
            for s, m in res["segments"].items()
            if s in ("light_users", "heavy_users")
        }
    return out


def run_seed(
    params, data, catalog, seed: int, ablation: bool, say, towers_dir=None, only=None
) -> dict[str, Any]:
    import tempfile

    from shortlist.models.fit import EARLY_STOPPED, train_two_tower
    from shortlist.models.two_tower import TwoTowerRetriever
    from shortlist.ranking.features import ABLATABLE
    from shortlist.ranking.train import train_ranker

    train, test, fit_part, validation, items, users = data
    t0 = time.perf_counter()
    served = None  # the refitted towers production serves beside the ranker
    if towers_dir:
        towers = TwoTowerRetriever.load(towers_dir)
    else:
        # The ranker learns from the early-stopped towers' scores on validation (the
        # refitted ones have seen it), as pipelines/train_ranker.py does.
        with tempfile.TemporaryDirectory(prefix="funnel-towers-") as tmp:
            model, _ = train_two_tower(
                params,
                fit_part,
                validation,
                items,
                users,
                seed=seed,
                progress=False,
                mlflow_run=False,
                out_dir=tmp,
            )
            early = Path(tmp) / EARLY_STOPPED
            if early.exists():
                towers, served = TwoTowerRetriever.load(str(early)), model
            else:  # no refit (towers.refit_on_validation false): one model
                towers = model
    say(f"seed {seed}: towers in {time.perf_counter() - t0:.0f}s")
    variants = {DEFAULT: list(params.ranker.feature_groups)}
    if ablation:
        variants["all"] = list(ABLATABLE)
        variants.update({f"no_{g}": [x for x in ABLATABLE if x != g] for g in ABLATABLE})
        # A variant with the configured groups is the default itself: train it once.
        variants = {
            k: v for k, v in variants.items() if k == DEFAULT or set(v) != set(variants[DEFAULT])
        }
    if only:
        variants = {k: v for k, v in variants.items() if k in only}
    result: dict[str, Any] = {"seed": seed, "variants": {}}
    for label, groups in variants.items():
        t1 = time.perf_counter()
        p = params.with_overrides({"ranker.feature_groups": groups})
        ranker, summary = train_ranker(
            p,
            towers,
            fit_part,
            validation,
            items,
            users,
            catalog=catalog,
            seed=seed,
            progress=False,
            mlflow_run=False,
        )
        ev = evaluate_funnel(p, towers, ranker, train, test, items, users, catalog)
        result["variants"][label] = {
            "feature_groups": groups,
            "funnel": ev["funnel"],
            "best_epoch": summary["best_epoch"],
            "stop_ndcg@20": summary["stop_ranker"]["ndcg@20"],
            "stop_retrieval_ndcg@20": summary["stop_retrieval_only"]["ndcg@20"],
            "fit_rows": summary["fit_rows"],
            "seconds": round(time.perf_counter() - t1, 1),
        }
        result["retrieval_only"] = ev["retrieval_only"]
        if label == DEFAULT and served is not None:
            result["served"] = evaluate_funnel(
                p, served, ranker, train, test, items, users, catalog
            )
            sf, sr = result["served"]["funnel"], result["served"]["retrieval_only"]
            say(
                f"  {'as served':12s} funnel NDCG@20 {sf['ndcg@20']:.4f} R@20 "
                f"{sf['recall@20']:.4f} | refitted towers NDCG@20 {sr['ndcg@20']:.4f} "
                f"R@20 {sr['recall@20']:.4f}"
            )
        f, r = ev["funnel"], ev["retrieval_only"]
        say(
            f"  {label:12s} funnel NDCG@20 {f['ndcg@20']:.4f} R@20 {f['recall@20']:.4f} | "
            f"retrieval NDCG@20 {r['ndcg@20']:.4f} R@20 {r['recall@20']:.4f} "
            f"({time.perf_counter() - t1:.0f}s)"
        )
    return result


def run_baselines(params, data, catalog, say) -> dict[str, Any]:
    from shortlist.eval.baselines import make_baseline
    from shortlist.eval.harness import evaluate

    train, test, fit_part, validation, items, users = data
    out = {}
    for name in ("ease", "als"):
        t0 = time.perf_counter()
        model = make_baseline(name, params).fit(fit_part, validation, items, users)
        res = evaluate(model, train, test, items, ks=KS, catalog=catalog)
        out[name] = {k: float(v) for k, v in res["segments"]["all"].items() if k in METRICS}
        out[name]["best_params"] = model.best_params
        say(
            f"  {name}: NDCG@20 {out[name]['ndcg@20']:.4f} R@20 {out[name]['recall@20']:.4f} "
            f"({time.perf_counter() - t0:.0f}s)"
        )
    return out


def _mean_std(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    return {
        m: [float(np.mean([r[m] for r in rows])), float(np.std([r[m] for r in rows]))]
        for m in METRICS
    }


def summarise(seeds: list[dict[str, Any]], baselines: dict[str, Any]) -> dict[str, Any]:
    table: dict[str, Any] = {"retrieval_only": _mean_std([s["retrieval_only"] for s in seeds])}
    labels = list(dict.fromkeys(label for s in seeds for label in s["variants"]))
    for label in sorted(labels, key=lambda x: x != DEFAULT):
        name = (
            "funnel" if label == DEFAULT else f"funnel {label} (seeds {_seeds_with(seeds, label)})"
        )
        table[name] = _mean_std(
            [s["variants"][label]["funnel"] for s in seeds if label in s["variants"]]
        )
    served = [s["served"] for s in seeds if "served" in s]
    if served:
        table["retrieval_only, refitted towers (as served)"] = _mean_std(
            [s["retrieval_only"] for s in served]
        )
        table["funnel, refitted towers (as served)"] = _mean_std([s["funnel"] for s in served])
    for name, m in baselines.items():
        table[name] = {k: [m[k], 0.0] for k in METRICS}
    with_default = [s for s in seeds if DEFAULT in s["variants"]]
    if not with_default:
        return {"table": table}
    as_served = {}
    if served:
        sg, sd = _gains([(s["funnel"], s["retrieval_only"]) for s in served])
        as_served = {
            "served_ndcg@20_gain_over_retrieval": sg,
            "served_recall@20_delta": sd,
            "served_seeds": len(served),
        }
    gains, deltas = _gains(
        [(s["variants"][DEFAULT]["funnel"], s["retrieval_only"]) for s in with_default]
    )
    ablation = {
        label: {
            "feature_groups": v.get("feature_groups"),
            "validation_ndcg@20": v["stop_ndcg@20"],
            "validation_retrieval_ndcg@20": v["stop_retrieval_ndcg@20"],
            "test_funnel_ndcg@20": v["funnel"]["ndcg@20"],
        }
        for label, v in seeds[0]["variants"].items()
    }
    return {
        "table": table,
        "feature_groups": with_default[0]["variants"][DEFAULT].get("feature_groups"),
        "ablation_seed": seeds[0]["seed"],
        "ablation": ablation,
        "ndcg@20_gain_over_retrieval": gains,
        "recall@20_delta": deltas,
        "target_met": bool(gains[0] >= 0.05 and deltas[0] >= 0),
        **as_served,
    }


def _gains(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> tuple[list, list]:
    """[mean, std] over seeds of the NDCG@20 gain (relative) and the Recall@20 delta
    (absolute) of each (funnel, retrieval-only) pair of metric dicts."""
    g = [f["ndcg@20"] / r["ndcg@20"] - 1 for f, r in pairs]
    d = [f["recall@20"] - r["recall@20"] for f, r in pairs]
    return [float(np.mean(g)), float(np.std(g))], [float(np.mean(d)), float(np.std(d))]


def _gain_text(gain: list[float], delta: list[float]) -> str:
    return (
        f"{100 * gain[0]:+.1f}% ± {100 * gain[1]:.1f}%; "
        f"Recall@20 delta {delta[0]:+.4f} ± {delta[1]:.4f}"
    )


def _seeds_with(seeds: list[dict[str, Any]], label: str) -> str:
    return ",".join(str(s["seed"]) for s in seeds if label in s["variants"])


def markdown(summary: dict[str, Any], n_seeds: int) -> str:
    lines = [
        f"| model (mean ± std, {n_seeds} seeds) | " + " | ".join(METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for name, m in summary["table"].items():
        cells = [f"{m[k][0]:.4f} ± {m[k][1]:.4f}" if m[k][1] else f"{m[k][0]:.4f}" for k in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "ndcg@20_gain_over_retrieval" in summary:
        gain = _gain_text(summary["ndcg@20_gain_over_retrieval"], summary["recall@20_delta"])
        lines.append("")
        lines.append(
            f"funnel NDCG@20 vs retrieval-only order: {gain}; target (+5%, recall not "
            f"dropping) {'met' if summary['target_met'] else 'NOT met'}; feature groups "
            f"{summary['feature_groups']}"
        )
    if "served_ndcg@20_gain_over_retrieval" in summary:
        gain = _gain_text(
            summary["served_ndcg@20_gain_over_retrieval"], summary["served_recall@20_delta"]
        )
        lines.append("")
        lines.append(
            f"as served (ranker beside the refitted towers, {summary['served_seeds']} seeds): "
            f"funnel NDCG@20 vs the refitted towers' order: {gain}"
        )
    if len(summary.get("ablation", {})) > 1:
        lines += [
            "",
            f"Feature-group ablation (seed {summary['ablation_seed']}; groups are chosen on "
            "the validation column):",
            "",
            "| variant | groups | validation NDCG@20 (retrieval-only) | test funnel NDCG@20 |",
            "|---|---|---:|---:|",
        ]
        for label, a in summary["ablation"].items():
            lines.append(
                f"| {label} | {', '.join(a['feature_groups'] or [])} | "
                f"{a['validation_ndcg@20']:.4f} ({a['validation_retrieval_ndcg@20']:.4f}) | "
                f"{a['test_funnel_ndcg@20']:.4f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Funnel quality on ml-100k (3 seeds).")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "ml-100k"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--no-ablation", action="store_true")
    ap.add_argument(
        "--ablation-seeds", type=int, default=1, help="ablate feature groups on the first N seeds"
    )
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "funnel_quality.json"))
    ap.add_argument(
        "--towers",
        help="use these trained towers (fitted on the fit part) for every seed instead of "
        "training them per seed; the seed then varies the ranker only",
    )
    ap.add_argument(
        "--variants", nargs="+", help="only these variants (default, all, no_crosses, ...)"
    )
    ap.add_argument("--merge", nargs="+", help="combine result files of parallel runs into --out")
    a = ap.parse_args(argv)
    if a.merge:
        return merge(a, argv)

    import torch

    from shortlist.config import load_params
    from shortlist.data.movielens import load_ml100k

    params = load_params(REPO / "params.yaml", a.overrides)
    torch.set_num_threads(params.ranker.threads)
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", flush=True)

    interactions, items, users = load_ml100k(a.data)
    train, test, fit_part, validation = protocol(interactions)
    data = (train, test, fit_part, validation, items, users)
    catalog = sorted(train["item_id"].astype(str).unique())
    say(
        f"ml-100k: train {len(train)} (fit {len(fit_part)} + validation {len(validation)}), "
        f"test {len(test)}, catalog {len(catalog)} train items"
    )
    baselines = {} if a.no_baselines else run_baselines(params, data, catalog, say)
    seeds = []
    for k, s in enumerate(a.seeds):
        ablate = not a.no_ablation and k < a.ablation_seeds
        seeds.append(run_seed(params, data, catalog, s, ablate, say, a.towers, a.variants))
        write(a, argv, params, seeds, baselines, t0)
    say(f"wrote {write(a, argv, params, seeds, baselines, t0)}")
    return 0


def merge(a, argv) -> int:
    """Combine the per-seed results (and baselines) of several runs into one file."""
    from shortlist.config import load_params

    docs = [json.loads(Path(f).read_text()) for f in a.merge]
    by_seed: dict[int, dict[str, Any]] = {}
    for d in docs:
        for s in d["per_seed"]:
            into = by_seed.setdefault(s["seed"], {**s, "variants": {}})
            into["variants"].update(s["variants"])
    seeds = sorted(by_seed.values(), key=lambda s: (-len(s["variants"]), s["seed"]))
    baselines = next((d["baselines"] for d in docs if d["baselines"]), {})
    a.seeds = [s["seed"] for s in seeds]
    params = load_params(REPO / "params.yaml", a.overrides)
    t0 = time.perf_counter() - sum(d["seconds"] for d in docs)
    parts = [d.get("provenance") for d in docs]
    print(f"wrote {write(a, argv, params, seeds, baselines, t0, parts)}")
    return 0


def write(a, argv, params, seeds, baselines, t0, parts=None) -> str:
    """Write (and print) the results so far: the JSON survives an interrupted run.

    `parts`: the provenance of each merged run (with --merge)."""
    summary = summarise(seeds, baselines)
    table = markdown(summary, len(seeds))
    print(table)
    result = {
        "benchmark": "funnel_quality",
        "data": "MovieLens 100K (ml-100k), retrieval-issue protocol",
        "command": "python benchmarks/funnel_quality.py " + " ".join(argv or sys.argv[1:]),
        "seeds": a.seeds,
        "candidates": params.ranker.candidates,
        "summary": summary,
        "markdown": table,
        "per_seed": seeds,
        "baselines": baselines,
        "seconds": round(time.perf_counter() - t0, 1),
        "provenance": provenance(__file__, argv),
        **({"parts_provenance": parts} if parts is not None else {}),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2, default=str))
    return a.out


if __name__ == "__main__":
    sys.exit(main())
