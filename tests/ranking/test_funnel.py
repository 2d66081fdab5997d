"""The offline funnel: rerank retrieved candidates and score them in the eval harness."""

from __future__ import annotations

import numpy as np
import pandas as pd

from benchmarks.funnel_quality import DEFAULT, evaluate_funnel, markdown, summarise
from shortlist.ranking.funnel import rerank_matrix
from shortlist.ranking.train import train_ranker
from tests.ranking.fakes import FakeRetriever, tiny_data
from tests.ranking.test_ranker import _split


def test_funnel_evaluation_and_matrix_rerank(params):
    p = params.with_overrides(
        {
            "ranker.candidates": 10,
            "ranker.epochs": 2,
            "ranker.hidden_dims": [8],
            "ranker.id_dim": 4,
            "ranker.threads": 1,
            "ranker.holdout_fraction": 0.3,
            "ranker.item_to_item_candidates": 10,
            "ranker.popular_candidates": 5,
        }
    )
    inter, items, users = tiny_data()
    fit, val, test = _split(inter)
    train = pd.concat([fit, val], ignore_index=True)
    towers = FakeRetriever(items["item_id"])
    catalog = sorted(train["item_id"].unique())
    ranker, _ = train_ranker(
        p, towers, fit, val, items, users, catalog=catalog, progress=False, mlflow_run=False
    )
    ev = evaluate_funnel(p, towers, ranker, train, test, items, users, catalog)
    r, f = ev["retrieval_only"], ev["funnel"]
    # Same candidates, so the same Recall@N; every metric is a proper fraction.
    assert r["recall@200"] == f["recall@200"]
    assert all(0.0 <= v <= 1.0 for v in (*r.values(), *f.values()) if isinstance(v, float))
    variant = {"funnel": f, "feature_groups": ["crosses"], "stop_ndcg@20": 0.2}
    variant["stop_retrieval_ndcg@20"] = 0.1
    s = summarise([{"seed": 0, "retrieval_only": r, "variants": {DEFAULT: variant}}], {})
    assert s["table"]["funnel"]["ndcg@20"][0] == f["ndcg@20"]
    assert s["ablation"][DEFAULT]["validation_ndcg@20"] == 0.2
    assert "served_ndcg@20_gain_over_retrieval" not in s
    # As served: the ranker beside other (refitted) towers, summarised on its own rows.
    better = {**r, "ndcg@20": r["ndcg@20"] * 1.1 + 0.01}
    seed = {"seed": 0, "retrieval_only": r, "variants": {DEFAULT: variant}}
    s = summarise([{**seed, "served": {"retrieval_only": r, "funnel": better}}], {})
    gain = s["served_ndcg@20_gain_over_retrieval"][0]
    assert gain == better["ndcg@20"] / r["ndcg@20"] - 1 and s["served_seeds"] == 1
    assert s["table"]["funnel, refitted towers (as served)"]["ndcg@20"][0] == better["ndcg@20"]
    assert "as served" in markdown(s, 1)

    # The serving-path matrix rerank ranks the top-N finite items per row plus what the
    # extra sources add, never an excluded (-inf) item.
    scores = np.random.default_rng(0).normal(size=(2, len(catalog))).astype(np.float32)
    scores[0, :5] = -np.inf
    out = rerank_matrix(ranker, ["u1", "u2"], [[catalog[7]], []], scores, catalog, None, 10)
    top = np.argsort(-scores, axis=1)[:, :10]
    assert np.isfinite(np.take_along_axis(out, top, 1)).all()
    sizes = ranker.meta["sources"]
    assert (np.isfinite(out).sum(1) <= 10 + sizes["item_to_item"] + sizes["popular"]).all()
    assert (np.isfinite(out).sum(1) > 10).all()  # the trend source adds even without history
    assert not np.isfinite(out[0, :5]).any()
    # Without extra sources: exactly the top N.
    ranker.meta["sources"] = {"item_to_item": 0, "popular": 0}
    ranker._sources = None
    out = rerank_matrix(ranker, ["u1", "u2"], [[catalog[7]], []], scores, catalog, None, 10)
    assert (np.isfinite(out).sum(1) == 10).all()
    assert np.isfinite(np.take_along_axis(out, top, 1)).all()
