"""Quality of the product path on several datasets: the `shortlist` CLI with its defaults.

For each dataset and seed:

1. Hold out, per user with at least 5 interactions, 20% of their interactions as the
   test set: the last 20% by time where the data has real timestamps, a random 20%
   otherwise (full ranking, the user's known items excluded).
2. Hand the rest to the product exactly as a user would: files written as CSV (the
   untimed dataset without a timestamp column, rows shuffled), then
   `shortlist ingest --source csv`, `split`, `train-towers`, `train-ranker` and
   `export-recs --stage funnel` (what is served: with the ranker only if it shipped) and
   `--stage retrieval`, all with params.yaml's defaults plus `--set project.seed=S`.
3. Score the exported top 20 against the held-out interactions; beside it MostPopular,
   ItemKNN, EASE and ALS, each tuned on an inner holdout of the known part drawn by the
   same rule, then refitted on the whole known part.

Datasets: ``ml-100k`` and ``ml-1m-subset`` from ../shared/datasets (or $SHORTLIST_DATASETS),
and ``ml-100k-untimed`` (ml-100k without its timestamp column, rows shuffled with a fixed
seed). Results: benchmarks/results/quality.json and a table on stdout.

    .venv/bin/python benchmarks/quality.py                       # 3 datasets x 3 seeds
    .venv/bin/python benchmarks/quality.py --datasets ml-100k --seeds 42
    .venv/bin/python benchmarks/quality.py --label tuned --set ...  # extra overrides
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from shortlist.config import load_params  # noqa: E402
from shortlist.data import movielens, schema  # noqa: E402
from shortlist.eval.baselines import make_baseline  # noqa: E402
from shortlist.eval.harness import evaluate, holdout_last  # noqa: E402

if __package__:  # imported as benchmarks.<name>
    from .provenance import provenance
else:  # run as a script: benchmarks/ is sys.path[0]
    from provenance import provenance

DATASETS = ("ml-100k", "ml-1m-subset", "ml-100k-untimed")
HOLDOUT = 0.2
MIN_USER_INTERACTIONS = 5
K = 20
BASELINES = ("most_popular", "item_knn", "ease", "als")


def datasets_dir() -> Path:
    return Path(os.environ.get("SHORTLIST_DATASETS", ROOT.parent / "shared" / "datasets"))


def load(name: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, bool]:
    """(interactions, items, users, timed) of a benchmark dataset."""
    base = datasets_dir()
    if name == "ml-1m-subset":
        inter, items, users = movielens.load_ml1m(base / "ml-1m-subset")
        return inter, items, users, True
    inter, items, users = movielens.load_ml100k(base / "ml-100k")
    if name == "ml-100k":
        return inter, items, users, True
    if name == "ml-100k-untimed":
        shuffled = inter.sample(frac=1.0, random_state=0).reset_index(drop=True)
        return shuffled, items, users, False
    raise SystemExit(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


def holdout_random(
    inter: pd.DataFrame, fraction: float, seed: int, min_interactions: int = MIN_USER_INTERACTIONS
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per user with >= min_interactions, a random floor(fraction * n) held out (seeded)."""
    rng = np.random.default_rng(seed)
    df = inter.reset_index(drop=True)
    key = rng.random(len(df))
    users = df[schema.USER_ID].astype(str)
    rank = pd.Series(key).groupby(users.to_numpy()).rank(method="first").to_numpy()
    n = users.map(users.value_counts()).to_numpy()
    held = (n >= min_interactions) & (rank > n - np.floor(fraction * n))
    return df[~held].reset_index(drop=True), df[held].reset_index(drop=True)


def holdout(inter: pd.DataFrame, timed: bool, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    if timed:
        return holdout_last(inter, HOLDOUT, MIN_USER_INTERACTIONS)
    return holdout_random(inter, HOLDOUT, seed)


def write_user_files(
    known: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame, timed: bool, out: Path
) -> dict[str, Path]:
    """The known part as a user's CSV files (no timestamp column when untimed)."""
    out.mkdir(parents=True, exist_ok=True)
    cols = [schema.USER_ID, schema.ITEM_ID, schema.WEIGHT] + ([schema.TIMESTAMP] if timed else [])
    paths = {"interactions": out / "interactions.csv", "items": out / "items.csv"}
    known[cols].to_csv(paths["interactions"], index=False)
    it = items.copy()
    it["genres"] = it["genres"].map(lambda g: "|".join(g))
    it.to_csv(paths["items"], index=False)
    paths["users"] = out / "users.csv"
    users.to_csv(paths["users"], index=False)
    return paths


def shortlist(args: list[str], overrides: list[str], log: Path) -> float:
    """Run one `shortlist` command; returns its wall time. Fails loudly with its output."""
    cmd = [sys.executable, "-m", "shortlist", *args]
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    with log.open("a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(args)}\n{tail}")
    return time.perf_counter() - t0


class Exported:
    """Recommendations read back from `export-recs` as a full-catalog score matrix."""

    name = "exported"

    def __init__(self, recs: pd.DataFrame, catalog: np.ndarray):
        self.item_ids = catalog
        col = pd.Index(catalog)
        self._rows = {
            u: (col.get_indexer(g["item_id"].astype(str)), g["rank"].to_numpy())
            for u, g in recs.groupby(recs["user_id"].astype(str))
        }

    def score(self, user_ids) -> np.ndarray:
        out = np.full((len(user_ids), len(self.item_ids)), -np.inf, np.float32)
        for r, u in enumerate(user_ids):
            if u in self._rows:
                cols, ranks = self._rows[u]
                ok = cols >= 0
                out[r, cols[ok]] = 1000.0 - ranks[ok]
        return out


def scores(rec: Any, known: pd.DataFrame, test: pd.DataFrame, catalog: np.ndarray) -> dict:
    res = evaluate(rec, known, test, ks=[K], catalog=catalog, segments=["all"])
    seg = res["segments"]["all"]
    return {f"ndcg@{K}": float(seg[f"ndcg@{K}"]), f"recall@{K}": float(seg[f"recall@{K}"])}


def run_baselines(known, test, timed, seed, catalog) -> dict[str, dict]:
    params = load_params(ROOT / "params.yaml", [f"project.seed={seed}"])
    inner_train, inner_val = holdout(known, timed, seed + 1000)
    out = {}
    for name in BASELINES:
        t0 = time.perf_counter()
        model = make_baseline(name, params).fit(inner_train, inner_val)
        out[name] = {
            **scores(model, known, test, catalog),
            "best_params": model.best_params,
            "seconds": round(time.perf_counter() - t0, 1),
        }
    return out


CACHE = ROOT / "benchmarks" / "results" / "raw"


def cached_baselines(key, known, test, timed, seed, catalog) -> dict[str, dict]:
    """Baseline scores for one holdout, reused across runs (results/raw is not committed):
    they depend only on the data, the holdout and the grids in params.yaml."""
    import hashlib

    grid = load_params(ROOT / "params.yaml").evaluation.model_dump_json()
    tag = hashlib.sha256(f"{key}|{grid}|{len(known)}|{len(test)}".encode()).hexdigest()[:16]
    path = CACHE / f"quality-baselines-{key[0]}-{tag}.json"
    if path.exists():
        return json.loads(path.read_text())
    out = run_baselines(known, test, timed, seed, catalog)
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, default=str))
    return out


def served_cold_share(recs: pd.DataFrame, known: pd.DataFrame) -> float:
    """Share of served slots that went to items with no interaction in the known data."""
    if recs.empty:
        return 0.0
    seen = set(known[schema.ITEM_ID].astype(str))
    return float((~recs["item_id"].astype(str).isin(seen)).mean())


def run_product(
    name: str, seed: int, known, test, items, users, timed, overrides, work: Path, tune_minutes
) -> dict[str, Any]:
    files = write_user_files(known, items, users, timed, work / "user-files")
    data, split, model = work / "data", work / "split", work / "model"
    log = work / "commands.log"
    sets = [
        f"project.seed={seed}",
        f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}",
        f"project.work_dir={work / 'wd'}",
        f"tuning.path={work / 'tuning.json'}",
        *overrides,
    ]
    t = {}
    t["ingest"] = shortlist(
        ["ingest", "--source", "csv", "--path", str(files["interactions"]),
         "--items", str(files["items"]), "--users", str(files["users"]), "--out", str(data)],
        [], log,
    )  # fmt: skip
    t["split"] = shortlist(["split", str(data), "--out", str(split)], sets, log)
    if tune_minutes:
        t["tune"] = shortlist(
            ["tune", str(split), "--budget-minutes", str(tune_minutes)], sets, log
        )
    t["towers"] = shortlist(["train-towers", str(split), "--out", str(model)], sets, log)
    t["ranker"] = shortlist(["train-ranker", str(split), "--model", str(model)], sets, log)
    users_csv = work / "test_users.csv"
    pd.DataFrame({"user_id": sorted(test[schema.USER_ID].astype(str).unique())}).to_csv(
        users_csv, index=False
    )
    catalog = items[schema.ITEM_ID].astype(str).to_numpy()
    out: dict[str, Any] = {}
    for stage in ("funnel", "retrieval"):
        recs_csv = work / f"recs_{stage}.csv"
        t[f"export_{stage}"] = shortlist(
            ["export-recs", str(model), "--data", str(data), "--users", str(users_csv),
             "--k", str(K), "--stage", stage, "--out", str(recs_csv)],
            sets, log,
        )  # fmt: skip
        recs = pd.read_csv(recs_csv, dtype={"user_id": str, "item_id": str})
        out[stage] = {
            **scores(Exported(recs, catalog), known, test, catalog),
            "cold_item_share": served_cold_share(recs, known),
        }
    split_info = json.loads((split / "split.json").read_text())
    ranker_info = json.loads((model / "ranker_metrics.json").read_text())
    out["ranker_shipped"] = bool(ranker_info.get("shipped", True))
    out["ranker_decision"] = ranker_info.get("decision", {})
    out["split"] = {k: split_info.get(k) for k in ("mode", "rule", "counts", "cold", "sizes")}
    tuning = work / "tuning.json"
    if tuning.exists():
        doc = json.loads(tuning.read_text())
        out["tuning"] = {k: doc[k] for k in ("best", "towers", "ranker", "seconds")}
    out["seconds"] = {k: round(v, 1) for k, v in t.items()}
    out["train_seconds"] = round(t["split"] + t["towers"] + t["ranker"], 1)
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def ms(vals):
        return [round(float(np.mean(vals)), 4), round(float(np.std(vals)), 4)]

    def group(r: dict[str, Any]) -> str:
        label = r.get("label", "defaults")
        return r["dataset"] if label == "defaults" else f"{r['dataset']} ({label})"

    out = {}
    for ds in dict.fromkeys(group(r) for r in rows):
        rs = [r for r in rows if group(r) == ds]
        base = {b: ms([r["baselines"][b][f"ndcg@{K}"] for r in rs]) for b in BASELINES}
        best = max(base, key=lambda b: base[b][0])
        funnel = [r["product"]["funnel"][f"ndcg@{K}"] for r in rs]
        retrieval = [r["product"]["retrieval"][f"ndcg@{K}"] for r in rs]
        best_vals = [r["baselines"][best][f"ndcg@{K}"] for r in rs]
        out[ds] = {
            "seeds": [r["seed"] for r in rs],
            "baselines_ndcg": base,
            "best_baseline": best,
            "funnel_ndcg": ms(funnel),
            "retrieval_ndcg": ms(retrieval),
            "funnel_over_best_baseline": ms(np.divide(funnel, best_vals)),
            "funnel_over_retrieval": ms(np.divide(funnel, retrieval)),
            "ranker_shipped": [r["product"]["ranker_shipped"] for r in rs],
            "served_cold_item_share": ms([r["product"]["funnel"]["cold_item_share"] for r in rs]),
            "train_seconds": ms([r["product"]["train_seconds"] for r in rs]),
            "split_mode": [r["product"]["split"]["mode"] for r in rs],
        }
    return out


def table(summary: dict[str, Any]) -> str:
    lines = [
        f"| dataset | best baseline NDCG@{K} | funnel (served) | retrieval only | "
        "funnel / best baseline | funnel / retrieval | ranker shipped | split | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for ds, s in summary.items():
        b = s["baselines_ndcg"][s["best_baseline"]]
        lines.append(
            f"| {ds} | {s['best_baseline']} {b[0]:.4f} ± {b[1]:.4f} "
            f"| {s['funnel_ndcg'][0]:.4f} ± {s['funnel_ndcg'][1]:.4f} "
            f"| {s['retrieval_ndcg'][0]:.4f} ± {s['retrieval_ndcg'][1]:.4f} "
            f"| {s['funnel_over_best_baseline'][0]:.3f}× "
            f"| {s['funnel_over_retrieval'][0]:.3f}× "
            f"| {sum(s['ranker_shipped'])}/{len(s['ranker_shipped'])} "
            f"| {','.join(sorted(set(s['split_mode'])))} "
            f"| {s['train_seconds'][0]:.0f} |"
        )
    return "\n".join(lines)


def merge(paths: list[str], out: Path) -> None:
    """One result from several: every run kept with its own provenance, one summary."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    rows = [
        dict(r, label=r.get("label", d["label"]), provenance=r.get("provenance", d["provenance"]))
        for d in docs
        for r in d["runs"]
    ]
    sources = [
        m
        for d in docs
        for m in d.get("merged_from")
        or [{"label": d["label"], "provenance": d["provenance"], "overrides": d.get("overrides")}]
    ]
    summary = summarise(rows)
    result = {
        "benchmark": "quality",
        "label": ", ".join(sorted({d["label"] for d in docs})),
        "provenance": provenance(__file__),
        "merged_from": sources,
        "protocol": docs[0]["protocol"],
        "summary": summary,
        "runs": rows,
    }
    out.write_text(json.dumps(result, indent=2, default=str))
    print(table(summary))
    print(f"merged {len(rows)} runs into {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--label", default="defaults", help="name of this configuration")
    ap.add_argument(
        "--tune-minutes",
        type=float,
        default=0.0,
        help="run `shortlist tune` with this budget after the split (0: defaults only)",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quality.json"))
    ap.add_argument("--keep", help="keep the work directories under this path (DATASET-SEED-LABEL)")
    ap.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="combine result files of runs made apart (e.g. datasets run in parallel)",
    )
    a = ap.parse_args()
    if a.merge:
        merge(a.merge, Path(a.out))
        return
    before = provenance(__file__)
    if not (datasets_dir() / "ml-100k").is_dir():
        raise SystemExit(f"datasets not found under {datasets_dir()} (set SHORTLIST_DATASETS)")
    seeds = [int(s) for s in a.seeds.split(",")]
    rows: list[dict[str, Any]] = []
    base_cache: dict[tuple, dict] = {}
    t_all = time.perf_counter()
    for ds in a.datasets.split(","):
        inter, items, users, timed = load(ds)
        catalog = items[schema.ITEM_ID].astype(str).to_numpy()
        for seed in seeds:
            known, test = holdout(inter, timed, seed)
            key = (ds, None if timed else seed)
            if key not in base_cache:
                base_cache[key] = cached_baselines(key, known, test, timed, seed, catalog)
            with contextlib.ExitStack() as stack:
                if a.keep:
                    work = Path(a.keep) / f"{ds}-{seed}-{a.label}"
                    shutil.rmtree(work, ignore_errors=True)
                    work.mkdir(parents=True)
                else:
                    work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                product = run_product(
                    ds, seed, known, test, items, users, timed, a.overrides, work, a.tune_minutes
                )
            row = {
                "dataset": ds,
                "label": a.label,
                "seed": seed,
                "timed": timed,
                "known_rows": len(known),
                "test_rows": len(test),
                "test_users": int(test[schema.USER_ID].nunique()),
                "baselines": base_cache[key],
                "product": product,
            }
            rows.append(row)
            best = max(row["baselines"].values(), key=lambda b: b[f"ndcg@{K}"])
            print(
                f"{ds} seed {seed}: funnel NDCG@{K} {product['funnel'][f'ndcg@{K}']:.4f}, "
                f"retrieval {product['retrieval'][f'ndcg@{K}']:.4f}, "
                f"best baseline {best[f'ndcg@{K}']:.4f}, ranker shipped "
                f"{product['ranker_shipped']}, train {product['train_seconds']} s",
                flush=True,
            )
    summary = summarise(rows)
    result = {
        "benchmark": "quality",
        "label": a.label,
        "provenance": before,
        "overrides": a.overrides,
        "protocol": (
            f"per-user {HOLDOUT:.0%} holdout (users with >= {MIN_USER_INTERACTIONS}): last by "
            "time where timed, random (seeded) where untimed; full ranking, known items "
            f"excluded; product = shortlist CLI defaults; baselines tuned on an inner holdout"
        ),
        "load_average_after": list(os.getloadavg()),
        "wall_seconds": round(time.perf_counter() - t_all, 1),
        "summary": summary,
        "runs": rows,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(table(summary))
    print(
        f"commit {before['commit']}{' (dirty)' if before.get('dirty') else ''}, "
        f"load before {before['load_average']} after {result['load_average_after']}, "
        f"wrote {out}"
    )


if __name__ == "__main__":
    main()
