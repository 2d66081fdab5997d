"""Training: histories without leakage, and a short real-data run that beats popularity."""

from __future__ import annotations

import numpy as np
import pandas as pd

from shortlist.models.features import FeatureState
from shortlist.models.train import build_examples, history_before


def test_history_before_excludes_target_ties_and_other_users():
    # rows sorted by (user, timestamp, item); user 0 has a tie at t=20.
    users = np.array([0, 0, 0, 0, 1, 1])
    times = np.array([10, 20, 20, 30, 5, 6])
    items = np.array([1, 2, 3, 4, 5, 6])
    hist = history_before(users, times, items, n=3)
    expected = np.array(
        [
            [0, 0, 0],  # first interaction: nothing before it
            [0, 0, 1],  # t=20: only t=10 is before
            [0, 0, 1],  # the tie partner (also t=20) is not history
            [1, 2, 3],  # t=30: everything before, most recent last
            [0, 0, 0],  # user 1 starts fresh: no leakage across users
            [0, 0, 5],
        ]
    )
    np.testing.assert_array_equal(hist, expected)


def test_build_examples_never_leaks_the_target_or_the_future():
    rng = np.random.default_rng(0)
    n = 1500
    train = pd.DataFrame(
        {
            "user_id": rng.integers(0, 50, n).astype(str),
            "item_id": rng.integers(0, 300, n).astype(str),
            "timestamp": rng.integers(0, 200, n).astype("int64"),
            "weight": np.ones(n, dtype="float32"),
        }
    ).drop_duplicates(["user_id", "item_id"])
    items = pd.DataFrame({"item_id": np.arange(300).astype(str), "title": "", "genres": [[]] * 300})
    state = FeatureState.fit(train, items, None, title_hash_buckets=16)
    ex = build_examples(train, state, None, history_len=8)
    # Reconstruct, per example, the (user, time) it belongs to, in the same order.
    order = train.sort_values(["user_id", "timestamp", "item_id"])
    vocab = np.array(["<oov>", *state.item_vocab])
    time_of = {
        (u, i): t for u, i, t in order[["user_id", "item_id", "timestamp"]].itertuples(index=False)
    }
    by_user = {u: g for u, g in order.groupby("user_id")}
    checked = 0
    for row, (u, i, t) in enumerate(
        order[["user_id", "item_id", "timestamp"]].itertuples(index=False)
    ):
        assert vocab[ex.item_idx[row]] == i
        hist = [vocab[k] for k in ex.history[row] if k > 0]
        assert i not in hist
        assert all(time_of[(u, h)] < t for h in hist), (u, i, t, hist)
        mine = by_user[u]
        assert hist == mine.loc[mine["timestamp"] < t, "item_id"].tolist()[-8:]
        checked += 1
    assert checked == len(train)


def _most_popular_recall(train: pd.DataFrame, validation: pd.DataFrame, k: int) -> float:
    pop = train["item_id"].value_counts()
    seen = train.groupby("user_id")["item_id"].apply(set)
    recalls = []
    for u, rel in validation.groupby("user_id")["item_id"]:
        rel = set(rel) & set(pop.index)
        if not rel:
            continue
        top = [i for i in pop.index if i not in seen.get(u, set())][:k]
        recalls.append(len(rel & set(top)) / len(rel))
    return float(np.mean(recalls))


def test_one_epoch_on_ml100k_beats_most_popular(ml100k_split, params):
    from shortlist.models.train import train_two_tower

    s = ml100k_split
    p = params.with_overrides({"towers.epochs": 1, "towers.threads": 1})
    model, report = train_two_tower(
        p, s["train"], s["validation"], s["items"], s["users"], progress=False, mlflow_run=False
    )
    popular = _most_popular_recall(s["train"], s["validation"], 20)
    assert 0.05 < popular < 0.2  # the reference point is sane
    assert report["validation"]["recall@20"] > popular * 1.3, (report["validation"], popular)
    assert report["validation"]["recall@200"] > report["validation"]["recall@20"]
    assert report["timings"]["train_seconds"] > 0
    assert len(model.item_ids) == len(s["items"])
