"""Two-tower variants on the VALIDATION split of ml-100k (never the test split).

Protocol: every rating is a positive; per user (>= 5 interactions) the last 20% by
(timestamp, item_id) is test (not used here), the 10% before it validation, the rest
train. Each variant is trained with early stopping on validation Recall@20 and scored by
full ranking over the train catalog with the user's train items excluded. For each
model the inference popularity term (weight * log train frequency, added to
dot / temperature) is swept without retraining. Reports Recall@20, NDCG@20, Recall@200 and
the mean popularity percentile of the top-20 items, to choose the towers defaults.

    .venv/bin/python benchmarks/towers_validation.py [--threads 2] [--variants base,no_logq]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from shortlist.config import load_params
from shortlist.data.movielens import load_ml100k
from shortlist.data.split import temporal_split
from shortlist.eval.metrics import popularity_percentile
from shortlist.models import train as T

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "towers_validation.json"
POP_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5)

VARIANTS: dict[str, dict] = {
    "base": {},
    "no_logq": {"towers.logq.enabled": False},
    "mixed_negatives_256": {"towers.mixed_negatives": 256},
    "temperature_0.1": {"towers.temperature": 0.1},
    "temperature_0.03": {"towers.temperature": 0.03},
    "history_20": {"towers.history_len": 20},
    "id_dropout_0.3": {"towers.id_dropout": 0.3},
    "batch_512": {"towers.batch_size": 512},
    "dim_128": {"towers.embedding_dim": 128, "towers.id_dim": 128},
    "hidden_256": {"towers.hidden_dim": 256},
    "temperature_0.07": {"towers.temperature": 0.07},
    "history_100": {"towers.history_len": 100},
    "patience_6": {"towers.early_stopping_patience": 6},
    "mixed_negatives_1024": {"towers.mixed_negatives": 1024},
}


def _top20_popularity(model, vset, catalog, users, train, w, log_pop) -> float:
    items = model.embed_items(catalog)
    q = model.embed_users(vset.user_ids, vset.histories, users, vset.timestamps)
    scores = q @ items.T + (w * model.temperature * log_pop[None, :] if w else 0.0)
    scores[vset.seen_rows, vset.seen_cols] = -np.inf
    top = np.argpartition(-scores, 20, axis=1)[:, :20]
    counts = train["item_id"].value_counts().reindex(model.state.item_vocab).fillna(0).to_numpy()
    return float(popularity_percentile(counts)[top].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=str(REPO.parent / "shared" / "datasets" / "ml-100k"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args()
    inter, items, users = load_ml100k(a.dataset)
    split = temporal_split(
        inter, mode="per_user", validation_fraction=0.1, test_fraction=0.2, min_user_interactions=5
    )
    # Early stopping only: a refit on train + validation would be scored on data it saw.
    base = load_params(REPO / "params.yaml").with_overrides({"towers.refit_on_validation": False})
    if a.threads:
        base = base.with_overrides({"towers.threads": a.threads})
    out = Path(a.out)
    results = json.loads(out.read_text())["variants"] if out.exists() else {}
    for name in a.variants.split(","):
        params = base.with_overrides(VARIANTS[name])
        t0 = time.perf_counter()
        model, report = T.train_two_tower(
            params,
            split.train,
            split.validation,
            items,
            users,
            seed=a.seed,
            progress=True,
            mlflow_run=False,
        )
        seconds = time.perf_counter() - t0
        state = model.state
        vset = T.ValidationSet(state, split.train, split.validation, params.towers.history_len)
        catalog = T.vocab_catalog(state, items)
        log_pop = model.log_popularity(state.item_vocab)
        sweep = {}
        for w in POP_WEIGHTS:
            m = T.evaluate_retriever(model, vset, catalog, users, (20, 200), w, log_pop)
            m["popularity_percentile@20"] = _top20_popularity(
                model, vset, catalog, users, split.train, w, log_pop
            )
            sweep[str(w)] = m
        results[name] = {
            "overrides": VARIANTS[name],
            "best_epoch": report["best_epoch"],
            "epochs_run": report["epochs_run"],
            "train_seconds": seconds,
            "validation": sweep,
        }
        m0 = sweep["0.0"]
        print(
            f"{name:22s} R@20 {m0['recall@20']:.4f} N@20 {m0['ndcg@20']:.4f} "
            f"R@200 {m0['recall@200']:.4f} pop {m0['popularity_percentile@20']:.1f} "
            f"epoch {report['best_epoch']}/{report['epochs_run']} {seconds:.0f}s",
            flush=True,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    "what": "two-tower variants on the ml-100k validation split (per-user 70/10/20)",
                    "command": "python benchmarks/towers_validation.py",
                    "seed": a.seed,
                    "machine": f"{platform.machine()} {platform.processor() or ''} threads={base.towers.threads}".strip(),
                    "variants": results,
                },
                indent=2,
            )
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
