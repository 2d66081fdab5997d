"""The item-item blend: EASE weights against a hand-derived case, scoring, and the ranker
that serves the blend when it wins."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shortlist.ranking.candidates import Retrieval
from shortlist.ranking.event_log import EventLog
from shortlist.ranking.featurize import featurize
from shortlist.ranking.item_item import (
    blend,
    blend_rows,
    fit_ease,
    item_item_scores,
    rows_item_item,
    standardise,
)
from shortlist.ranking.ranker import Ranker
from shortlist.ranking.requests import LabeledRequest
from shortlist.ranking.train import _order, train_ranker
from tests.ranking.fakes import FakeRetriever, tiny_data
from tests.ranking.test_ranker import _split


def _pairs(rows: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id"])


def test_ease_weights_match_the_hand_derived_two_item_case():
    # X = [[1, 1], [1, 0]], lambda = 1: G = [[3, 1], [1, 2]], P = G^-1 = [[2, -1], [-1, 3]] / 5,
    # B[i, j] = -P[i, j] / P[j, j]: B[0, 1] = (1/5) / (3/5) = 1/3, B[1, 0] = (1/5) / (2/5) = 1/2.
    inter = _pairs([("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "a")])  # a repeat counts once
    table = fit_ease(inter, {"a": 0, "b": 1}, l2=1.0, neighbours=5, max_items=10)
    assert table.indptr.tolist() == [0, 1, 2]
    assert table.indices.tolist() == [1, 0]
    np.testing.assert_allclose(table.sims, [1 / 3, 1 / 2], rtol=1e-6)
    # A user who had a: item b scores B[a, b]; a user who had both scores nothing new.
    np.testing.assert_allclose(item_item_scores(table, np.array([0]), np.array([1, 0])), [1 / 3, 0])


def test_ease_keeps_the_most_popular_items_and_the_largest_weights():
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{i}") for u in range(40) for i in range(6) if rng.random() < 0.5]
    rows += [("u0", "rare")]  # the least popular item
    inter = _pairs(rows)
    index = {f"i{i}": i for i in range(6)} | {"rare": 6}
    table = fit_ease(inter, index, l2=2.0, neighbours=2, max_items=6)
    assert table.indptr[7] - table.indptr[6] == 0  # the rare item's row is empty
    assert 6 not in table.indices  # and it is nobody's neighbour
    # Against the dense closed form on the six fitted items: each row keeps its top 2.
    x = pd.crosstab(inter["user_id"], inter["item_id"]).reindex(columns=[f"i{i}" for i in range(6)])
    x = (x.fillna(0).to_numpy() > 0).astype(float)
    p = np.linalg.inv(x.T @ x + 2.0 * np.eye(6))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    for i in range(6):
        sl = slice(table.indptr[i], table.indptr[i + 1])
        expect = np.argsort(-b[i], kind="stable")[:2]
        assert sorted(table.indices[sl].tolist()) == sorted(expect.tolist())
        np.testing.assert_allclose(table.sims[sl], np.sort(b[i])[::-1][:2], rtol=1e-5)


def test_item_item_scores_sum_over_the_history_with_repeats_and_unknowns():
    rng = np.random.default_rng(1)
    rows = [(f"u{u}", f"i{i}") for u in range(30) for i in range(8) if rng.random() < 0.4]
    table = fit_ease(
        _pairs(rows), {f"i{i}": i for i in range(8)}, l2=1.0, neighbours=3, max_items=8
    )
    dense = np.zeros((8, 8))
    for i in range(8):
        sl = slice(table.indptr[i], table.indptr[i + 1])
        dense[i, table.indices[sl]] = table.sims[sl]
    history = np.array([0, 3, 5, -1, 99])  # -1 and 99 are outside the table
    cands = np.array([1, 2, 2, 7, -1, 4])
    expect = dense[[0, 3, 5]].sum(0)[np.where(cands >= 0, cands, 0)] * (cands >= 0)
    np.testing.assert_allclose(item_item_scores(table, history, cands), expect, rtol=1e-6)
    offsets = np.array([0, 3, 6])
    got = rows_item_item(table, [history, np.array([], np.int64)], cands, offsets)
    np.testing.assert_allclose(got, np.r_[expect[:3], 0, 0, 0], rtol=1e-6)


def test_blend_standardises_each_score_over_the_request():
    r = np.array([3.0, 1.0, 2.0])
    e = np.array([0.0, 10.0, 0.0])
    assert np.argsort(-blend(r, e, 0.0)).tolist() == [0, 2, 1]  # weight 0: retrieval order
    np.testing.assert_allclose(standardise(np.full(3, 7.0)), 0.0)  # constant: no evidence
    np.testing.assert_allclose(blend(r, e, 2.0), standardise(r) + 2.0 * standardise(e))
    # Scale-free: multiplying either score by a positive constant changes nothing.
    np.testing.assert_allclose(blend(100 * r, 0.01 * e, 0.5), blend(r, e, 0.5))
    flat = blend_rows(np.r_[r, r], np.r_[e, 3 * e], np.array([0, 3, 6]), 0.5)
    np.testing.assert_allclose(flat, np.r_[blend(r, e, 0.5), blend(r, e, 0.5)])


@pytest.fixture
def blend_params(params):
    return params.with_overrides(
        {
            "ranker.candidates": 12,
            "ranker.random_negatives": 3,
            "ranker.epochs": 1,
            "ranker.batch_size": 64,
            "ranker.hidden_dims": [8],
            "ranker.id_dim": 4,
            "ranker.threads": 1,
            "ranker.learning_rate": 1e-7,  # the network stays at its initialisation
            "ranker.cooccurrence_neighbours": 5,
            "ranker.blend_weights": [0.5, 2.0],
            "ranker.ease_l2": 5.0,
            "ranker.ease_neighbours": 10,
        }
    )


def test_the_blend_is_chosen_on_validation_and_served_as_trained(blend_params, tmp_path):
    # Users keep to one genre and the stand-in retriever's vectors are random: item-item
    # co-consumption carries the signal retrieval lacks, so the blend must win here (and
    # the untrained network must not).
    inter, items, users = tiny_data(n_users=60, n_events=3000)
    train, val, _ = _split(inter)
    retriever = FakeRetriever(items["item_id"])
    ranker, summary = train_ranker(
        blend_params, retriever, train, val, items, users, progress=False, mlflow_run=False
    )
    chosen = summary["blend"]
    assert set(chosen["validation"]) == {0.5, 2.0}
    assert chosen["weight"] == max(chosen["validation"], key=chosen["validation"].get)
    assert chosen["decision"]["requests"] == summary["ensemble"][0]["decide_requests"]
    assert chosen["decision"]["shipped"], chosen["decision"]["reason"]
    assert not summary["decision"]["shipped"], summary["decision"]["reason"]
    assert summary["order"] == "blend" and summary["shipped"]
    assert ranker.order == "blend" and ranker.item_item is not None

    ranker.save(str(tmp_path / "model"))
    loaded = Ranker.load(str(tmp_path / "model"))
    assert loaded.order == "blend" and loaded.meta["blend_weight"] == chosen["weight"]
    np.testing.assert_array_equal(loaded.item_item.sims, ranker.item_item.sims)

    # Train/serve parity: the offline rows' blend equals what serving computes.
    seen = pd.concat([train, val])
    log = EventLog(seen, loaded.space.item_index())
    retrieval = Retrieval(retriever, items, items["item_id"], users)
    t = log.end + 3600
    req = LabeledRequest("u2", t, positives={}, exclude=np.array([], np.int64))
    ex = featurize(loaded.space, log, retrieval, [req], n_candidates=10)
    hist = log.user_history("u2", t)[0].tolist()
    hist_pos = loaded.space.item_positions(hist)
    i2i = rows_item_item(loaded.item_item, [hist_pos], ex.rows, ex.offsets)
    offline = blend_rows(ex.retrieval, i2i, ex.offsets, chosen["weight"])
    ids = list(loaded.space.item_ids[ex.rows])
    served = loaded.score("u2", hist, ids, {"timestamp": t, "retrieval_scores": ex.retrieval})
    np.testing.assert_allclose(served, offline, rtol=0, atol=1e-5)
    # The served table is refitted on everything seen (as the neighbours are).
    assert len(loaded.item_item.indices) >= len(fit_ease_on(train, loaded).indices)


def fit_ease_on(part: pd.DataFrame, ranker: Ranker):
    return fit_ease(part, ranker.space.item_index(), l2=5.0, neighbours=10, max_items=10_000)


def test_the_order_served_is_the_larger_winner():
    from shortlist.ranking.decision import decide

    win = decide(np.array([0.6, 0.7, 0.8]), np.array([0.1, 0.2, 0.1]), metric="m", min_z=1.0)
    bigger = decide(np.array([0.9, 0.9, 0.95]), np.array([0.1, 0.2, 0.1]), metric="m", min_z=1.0)
    lose = decide(np.array([0.1, 0.2, 0.1]), np.array([0.6, 0.7, 0.8]), metric="m", min_z=1.0)
    assert _order(lose, None) == "retrieval"
    assert _order(win, None) == "ranker"
    assert _order(win, {"decision": bigger}) == "blend"
    assert _order(bigger, {"decision": win}) == "ranker"
    assert _order(lose, {"decision": win}) == "blend"
    assert _order(lose, {"decision": lose}) == "retrieval"


def test_top_per_row_in_blocks_equals_the_whole_matrix_at_once():
    """The blocked top-k (bounded temporaries at 10k items) picks what one pass over the
    whole matrix picks, ties included, largest first."""
    from shortlist.ranking.item_item import _top_per_row

    rng = np.random.default_rng(0)
    b = rng.integers(0, 6, size=(37, 20)).astype(np.float64)  # many ties
    k = 4
    part = np.argpartition(-b, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(b, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    top, w = _top_per_row(b, k, block=5)
    assert np.array_equal(top, np.take_along_axis(part, order, axis=1))
    assert np.array_equal(w, np.take_along_axis(vals, order, axis=1))
    assert np.all(np.diff(w, axis=1) <= 0)


def test_the_in_place_inverse_equals_gesv_and_reuses_the_gram_buffer():
    """Bit for bit the inverse LAPACK's gesv gives without overwriting (so working in place
    moves no blend table), and numpy's inverse up to rounding: numpy and scipy ship their
    own OpenBLAS builds, which differ in the last bit on some CPUs."""
    import scipy.sparse as sp
    from scipy.linalg import lapack

    from shortlist.ranking.item_item import _inverse_in_place

    x = sp.random(400, 120, density=0.05, random_state=0, format="csr")
    x.data[:] = 1.0
    gram = (x.T @ x).toarray()
    gram[np.diag_indices_from(gram)] += 10.0
    expected = lapack.dgesv(gram.copy(order="F"), np.eye(len(gram), order="F"))[2]
    for layout in (gram, np.ascontiguousarray(gram)):  # sparse products give either
        before = layout.copy()
        got = _inverse_in_place(layout)
        assert np.array_equal(got, expected)
        np.testing.assert_allclose(got, np.linalg.inv(before), rtol=1e-12, atol=1e-15)
        assert not np.array_equal(layout, before)  # factorised in its own buffer


def test_the_gram_in_column_blocks_equals_the_whole_product():
    import scipy.sparse as sp

    from shortlist.ranking.item_item import _gram

    x = sp.random(500, 130, density=0.05, random_state=1, format="csr")
    x.data[:] = 1.0
    whole = (x.T @ x).toarray() + 3.0 * np.eye(130)
    got = _gram(x, 3.0, block=32)
    assert got.flags.f_contiguous
    assert np.array_equal(got, whole)
