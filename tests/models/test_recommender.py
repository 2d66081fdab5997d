"""TwoTowerRecommender: the protocol the evaluation harness scores every model through."""

from __future__ import annotations

import numpy as np
import pandas as pd

from shortlist.config import Params
from shortlist.models.recommender import TwoTowerRecommender
from tests.models.test_two_tower import tiny_data

TINY = {
    "towers.embedding_dim": 16,
    "towers.hidden_dim": 32,
    "towers.id_dim": 16,
    "towers.history_len": 5,
    "towers.batch_size": 64,
    "towers.epochs": 2,
    "towers.title_hash_buckets": 64,
    "towers.threads": 1,
    "towers.logq.hash_buckets": 4096,
}


def test_fit_score_and_folded_vectors(tmp_path):
    from shortlist.eval.harness import evaluate

    train, validation, items, users = tiny_data()
    params = Params().with_overrides({**TINY, "towers.logq.inference_popularity_weight": 0.3})
    rec = TwoTowerRecommender(params, seed=1).fit(train, validation, items, users)
    assert list(rec.item_ids) == list(items["item_id"])
    scores = rec.score(["u0", "u5", "brand-new-user"])
    assert scores.shape == (3, 40) and scores.dtype == np.float32
    assert np.isfinite(scores).all()
    # The popularity term is folded into one extra column: inner products are the scores.
    iv, qv = rec.item_vectors(), rec.query_vectors(["u0", "u5", "brand-new-user"])
    assert iv.shape == (40, 17) and qv.shape == (3, 17)
    np.testing.assert_allclose(qv @ iv.T, scores, atol=1e-5)

    # The adapter scores validation users from train histories here (history="train").
    rec_train = TwoTowerRecommender(params, seed=1, history="train").fit(
        train, validation, items, users
    )
    result = evaluate(rec_train, train, validation, items, ks=(5, 20))
    assert result["users"] == validation["user_id"].nunique()
    assert 0 < result["segments"]["all"]["recall@20"] <= 1

    rec.model.save(str(tmp_path / "m"))
    again = TwoTowerRecommender.from_model_dir(
        str(tmp_path / "m"),
        params,
        interactions=pd.concat([train, validation]),
        items=items,
        users=users,
    )
    np.testing.assert_allclose(again.score(["u0", "u5"]), scores[:2], atol=1e-6)


def test_user_histories_match_the_per_call_builders():
    """The recommender's one-off index gives what a scan of every interaction gives."""
    from shortlist.models.recommender import UserHistories
    from shortlist.models.two_tower import TwoTowerRetriever, histories_from

    rng = np.random.default_rng(3)
    n = 3_000
    inter = pd.DataFrame(
        {
            "user_id": rng.integers(0, 200, n).astype(str),
            "item_id": np.char.add("i", rng.integers(0, 90, n).astype(str)),
            "timestamp": rng.integers(0, 40, n),  # many ties: the item id breaks them
        }
    )
    ids = [*inter["user_id"].unique()[:50].tolist(), "nobody", "7"]
    index = UserHistories(inter)
    for k in (1, 5, 50):
        assert index.histories(ids, k) == histories_from(inter, ids, k)
    expected = TwoTowerRetriever.last_timestamps(None, inter, ids)
    np.testing.assert_array_equal(index.last_timestamps(ids), expected)
    empty = UserHistories(inter.iloc[:0])
    assert empty.histories(["a"], 3) == [[]] and np.isnan(empty.last_timestamps(["a"])).all()
