"""Training: histories without leakage, and a short real-data run that beats popularity."""

from __future__ import annotations

import numpy as np
import pandas as pd

from shortlist.models.examples import build_examples, history_before, history_leave_one_out
from shortlist.models.features import FeatureState


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


def test_history_leave_one_out_holds_the_other_train_items_most_recent_last():
    # rows sorted by (user, timestamp, item); user 1 has two items, user 2 one.
    users = np.array([0, 0, 0, 0, 0, 1, 1, 2])
    items = np.array([1, 2, 3, 4, 5, 6, 7, 8])
    hist = history_leave_one_out(users, items, n=3)
    expected = np.array(
        [
            [3, 4, 5],  # targets outside the last 3: the user's last 3 items
            [3, 4, 5],
            [2, 4, 5],  # a target among the last 3 is replaced by the one before
            [2, 3, 5],
            [2, 3, 4],
            [0, 0, 7],  # short users are left-padded with 0, never see other users
            [0, 0, 6],
            [0, 0, 0],  # a single item: empty history
        ]
    )
    np.testing.assert_array_equal(hist, expected)
    for row, target in enumerate(items):
        assert target not in hist[row]


def test_build_examples_leave_one_out_uses_the_whole_train_history():
    train = pd.DataFrame(
        {
            "user_id": ["a", "a", "a", "b"],
            "item_id": ["x", "y", "z", "x"],
            "timestamp": np.array([3, 1, 2, 5], dtype="int64"),
        }
    )
    items = pd.DataFrame({"item_id": ["x", "y", "z"], "title": "", "genres": [[]] * 3})
    state = FeatureState.fit(train, items, None, title_hash_buckets=16)
    ex = build_examples(train, state, None, history_len=4, history_mode="leave_one_out")
    vocab = np.array(["<oov>", *state.item_vocab])
    got = [[vocab[k] for k in h if k > 0] for h in ex.history]
    # user a in time order: y (1), z (2), x (3); the last row is user b's only item
    assert [vocab[t] for t in ex.item_idx] == ["y", "z", "x", "x"]
    assert got == [["z", "x"], ["y", "x"], ["y", "z"], []]


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
    from shortlist.models.fit import train_two_tower

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


def _tiny(seed: int = 0):
    rng = np.random.default_rng(seed)
    n = 600
    df = pd.DataFrame(
        {
            "user_id": rng.integers(0, 30, n).astype(str),
            "item_id": rng.integers(0, 80, n).astype(str),
            "timestamp": rng.integers(0, 1000, n).astype("int64"),
            "weight": np.ones(n, dtype="float32"),
        }
    ).drop_duplicates(["user_id", "item_id"])
    df = df.sort_values("timestamp", kind="stable")
    cut = df["timestamp"] >= 800
    items = pd.DataFrame({"item_id": np.arange(90).astype(str), "title": "", "genres": [[]] * 90})
    return df[~cut], df[cut], items


def test_refit_retrains_on_train_plus_validation_deterministically(params, tmp_path):
    from shortlist.models.fit import EARLY_STOPPED, train_two_tower
    from shortlist.models.two_tower import TwoTowerRetriever

    train, validation, items = _tiny()
    p = params.with_overrides(
        {
            "towers.epochs": 3,
            "towers.early_stopping_patience": 3,
            "towers.threads": 1,
            "towers.embedding_dim": 8,
            "towers.hidden_dim": 16,
            "towers.id_dim": 8,
            "towers.batch_size": 64,
            "towers.mixed_negatives": 8,
            "towers.title_hash_buckets": 16,
            "towers.logq.hash_buckets": 1024,
        }
    )
    kw = {"seed": 7, "progress": False, "mlflow_run": False}
    m1, r1 = train_two_tower(p, train, validation, items, None, **kw)
    out = tmp_path / "model"
    m2, r2 = train_two_tower(p, train, validation, items, None, out_dir=str(out), **kw)
    early = TwoTowerRetriever.load(str(out / EARLY_STOPPED))
    off, r_off = train_two_tower(
        p.with_overrides({"towers.refit_on_validation": False}),
        train,
        validation,
        items,
        None,
        out_dir=str(out),
        **kw,
    )
    # The early-stopping model is saved beside the refit one (the ranker trains on it),
    # and removed when a later run into the same directory has no refit.
    np.testing.assert_array_equal(early.item_vectors(items), off.item_vectors(items))
    assert not early.meta["refit_on_validation"]
    assert not (out / EARLY_STOPPED).exists()
    # the early-stopping run is the same whether or not a refit follows
    assert r1["validation"] == r_off["validation"]
    assert r1["best_epoch"] == r_off["best_epoch"] >= 1
    refit = r1["refit"]
    assert refit["epochs"] == r1["best_epoch"]
    assert len(refit["history"]) == refit["epochs"]
    assert refit["train_examples"] == len(train) + len(validation)
    assert r_off["refit"] is None
    # deterministic for a seed; the refit model differs from the early-stopping one
    np.testing.assert_array_equal(m1.item_vectors(items), m2.item_vectors(items))
    assert not np.allclose(m1.item_vectors(items), off.item_vectors(items))
    assert m1.meta["refit_on_validation"] and not off.meta["refit_on_validation"]


def test_early_stopping_keeps_the_best_weights_and_stops_after_patience():
    import torch

    from shortlist.models.early_stopping import EarlyStopping

    net = torch.nn.Linear(1, 1)
    stop = EarlyStopping(patience=2)
    assert stop.best_state is None and stop.best_epoch == 0
    stopped = []
    for epoch, metric in enumerate([0.1, 0.3, 0.3, 0.2, 0.5], start=1):
        with torch.no_grad():
            net.weight.fill_(epoch)
        stopped.append(stop.update(epoch, metric, net))
    # a tie does not improve: epochs 3 and 4 are stale, so training stops after epoch 4
    assert stopped == [False, False, False, True, False]
    assert stop.best_epoch == 5 and stop.best_state["weight"].item() == 5.0
    net.weight.data.fill_(0.0)  # the kept copy does not follow the module
    assert stop.best_state["weight"].item() == 5.0
