"""Item-item neighbours and the co-occurrence features, against a dense brute force."""

from __future__ import annotations

import numpy as np
import pandas as pd

from shortlist.eval.baselines import ItemKNN
from shortlist.ranking import cooccurrence as C
from shortlist.ranking.cooccurrence import ItemNeighbours, cooccurrence_features
from tests.ranking.fakes import tiny_data


def _dense_sim(inter: pd.DataFrame, index: dict[str, int], shrink: float) -> np.ndarray:
    x = np.zeros((inter["user_id"].nunique(), len(index)))
    users = {u: k for k, u in enumerate(sorted(inter["user_id"].unique()))}
    for u, i in zip(inter["user_id"], inter["item_id"], strict=True):
        x[users[u], index[i]] = 1.0
    co = x.T @ x
    n = np.sqrt(x.sum(0))
    sim = co / (n[:, None] * n[None, :] + shrink + 1e-12)
    np.fill_diagonal(sim, 0.0)
    return sim


def test_neighbours_are_each_rows_top_k_by_shrunk_cosine(monkeypatch):
    inter, items, _ = tiny_data()
    index = {i: k for k, i in enumerate(items["item_id"])}
    monkeypatch.setattr(C, "BLOCK_ITEMS", 7)  # several blocks, uneven last one
    table = ItemNeighbours.fit(inter, index, neighbours=5, shrink=3.0)
    dense = _dense_sim(inter, index, 3.0)
    assert table.n_items == len(index)
    for i in range(len(index)):
        s = slice(table.indptr[i], table.indptr[i + 1])
        got_idx, got_sim = table.indices[s], table.sims[s]
        assert len(got_idx) == min(5, int((dense[i] > 0).sum()))
        assert np.all(np.diff(got_sim) <= 0)  # sorted descending
        np.testing.assert_allclose(got_sim, dense[i, got_idx], rtol=1e-5)
        # Nothing left out is more similar than the weakest kept neighbour.
        rest = np.delete(dense[i], got_idx)
        assert rest.max(initial=0.0) <= got_sim.min() + 1e-6
        assert i not in got_idx


def test_entry_budget_blocks_give_the_same_table(monkeypatch):
    inter, items, _ = tiny_data()
    index = {i: k for k, i in enumerate(items["item_id"])}
    whole = ItemNeighbours.fit(inter, index, neighbours=5, shrink=3.0)
    monkeypatch.setattr(C, "BLOCK_ENTRIES", 10)  # many blocks of a few rows each
    split = ItemNeighbours.fit(inter, index, neighbours=5, shrink=3.0)
    for name in ("indptr", "indices", "sims"):
        np.testing.assert_array_equal(getattr(split, name), getattr(whole, name))


def test_blocks_respect_the_budget_and_the_row_cap():
    cost = np.array([3, 3, 3, 20, 1, 1, 1, 1, 1])
    got = C.blocks(cost, budget=6, max_rows=3)
    assert got == [(0, 2), (2, 3), (3, 4), (4, 7), (7, 9)]
    assert all(cost[a:b].sum() <= 6 or b - a == 1 for a, b in got)
    assert C.blocks(np.array([]), 5, 2) == []


def test_score_equals_item_knn_without_truncation():
    inter, items, _ = tiny_data()
    index = {i: k for k, i in enumerate(items["item_id"])}
    table = ItemNeighbours.fit(inter, index, neighbours=len(index), shrink=10.0)
    knn = ItemKNN({"neighbours": [len(index)], "shrink": [10.0]}, refit_on_validation=False)
    knn.fit(inter, inter.iloc[:0], items)
    user = "u3"
    hist = inter[inter["user_id"] == user]["item_id"].map(index).to_numpy()
    cand = np.arange(len(index))
    feats = cooccurrence_features(table, hist, cand, recent=3)
    expected = knn.score([user])[0][[list(knn.item_ids).index(i) for i in items["item_id"]]]
    np.testing.assert_allclose(np.expm1(feats[:, 0]), expected, rtol=1e-4, atol=1e-6)


def test_features_by_hand():
    # Items 0..3; neighbours: 0 -> [1 (0.5), 2 (0.2)], 1 -> [0 (0.5)], 2 -> [], 3 -> [1 (0.4)].
    table = ItemNeighbours(
        indptr=np.array([0, 2, 3, 3, 4]),
        indices=np.array([1, 2, 0, 1], np.int32),
        sims=np.array([0.5, 0.2, 0.5, 0.4], np.float32),
    )
    hist = np.array([0, 3, 2])  # oldest first; the last two are "recent"
    cand = np.array([1, 2, 0, -1, 3])
    f = cooccurrence_features(table, hist, cand, recent=2, n_ranked=3)
    score = np.array([0.9, 0.2, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(f[:, 0], np.log1p(score), rtol=1e-6)
    np.testing.assert_allclose(f[:, 1], np.log1p([0.4, 0, 0, 0, 0]), rtol=1e-6)
    np.testing.assert_allclose(f[:, 2], [0.5, 0.2, 0, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(f[:, 3], np.log1p([2, 1, 0, 0, 0]), rtol=1e-6)
    np.testing.assert_allclose(f[:, 4], [1.0, 0.2 / 0.9, 0, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(f[:, 5], np.log1p([1, 2, 3, 0, 3]), rtol=1e-6)
    assert not f[3].any()  # unknown candidate: all zeros


def test_empty_history_and_round_trip():
    inter, items, _ = tiny_data()
    index = {i: k for k, i in enumerate(items["item_id"])}
    table = ItemNeighbours.fit(inter, index, neighbours=4, shrink=0.0)
    f = cooccurrence_features(table, np.zeros(0, np.int64), np.arange(5), recent=10)
    assert f.shape == (5, len(C.COOCCURRENCE_NAMES))
    assert not f[:, :5].any()
    back = ItemNeighbours.from_arrays(table.arrays("x"), "x")
    for a, b in zip(
        (table.indptr, table.indices, table.sims),
        (back.indptr, back.indices, back.sims),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_entries_of_concatenates_rows_in_order_and_skips_unknown_positions():
    table = ItemNeighbours(
        indptr=np.array([0, 2, 3, 3, 4]),
        indices=np.array([1, 2, 0, 1], np.int32),
        sims=np.array([0.5, 0.2, 0.5, 0.4], np.float32),
    )
    flat = table.entries_of(np.array([3, -1, 0, 7, 2, 1]))
    assert flat.tolist() == [3, 0, 1, 2]  # row 3, row 0, row 1; -1, 7 and empty row 2 add none
    assert table.n_entries(np.array([3, -1, 0, 7, 2, 1])) == 4
    assert table.entries_of(np.array([2, -5])).tolist() == []


def test_recent_score_ignores_unknown_history_positions():
    # The recent window counts history positions, known or not: here the latest two are an
    # unknown item (-1) and item 3, so only item 3's neighbours are "recent".
    table = ItemNeighbours(
        indptr=np.array([0, 2, 3, 3, 4]),
        indices=np.array([1, 2, 0, 1], np.int32),
        sims=np.array([0.5, 0.2, 0.5, 0.4], np.float32),
    )
    f = cooccurrence_features(table, np.array([0, -1, 3]), np.array([1, 2]), recent=2)
    np.testing.assert_allclose(f[:, 0], np.log1p([0.9, 0.2]), rtol=1e-6)
    np.testing.assert_allclose(f[:, 1], np.log1p([0.4, 0.0]), rtol=1e-6)
