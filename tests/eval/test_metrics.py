"""Metric definitions against values worked out by hand."""

import math

import numpy as np
import pytest

from shortlist.eval import metrics as M


def test_ranking_metrics_match_hand_computed_values():
    hits = np.array([[1, 0, 1, 0]], bool)  # relevant at ranks 1 and 3, |rel| = 3
    out = M.ranking_metrics(hits, np.array([3]), ks=[2, 4])
    assert out["recall@2"][0] == pytest.approx(1 / 3)
    assert out["recall@4"][0] == pytest.approx(2 / 3)
    assert out["capped_recall@2"][0] == pytest.approx(1 / 2)
    assert out["capped_recall@4"][0] == pytest.approx(2 / 3)
    idcg2 = 1 + 1 / math.log2(3)
    assert out["ndcg@2"][0] == pytest.approx(1 / idcg2)
    idcg3 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert out["ndcg@4"][0] == pytest.approx((1 + 1 / math.log2(4)) / idcg3)
    assert out["hitrate@2"][0] == 1.0


def test_no_hit_scores_zero_and_perfect_list_scores_one():
    out = M.ranking_metrics(np.array([[0, 0], [1, 1]], bool), np.array([1, 2]), ks=[2])
    assert out["recall@2"].tolist() == [0.0, 1.0]
    assert out["ndcg@2"].tolist() == pytest.approx([0.0, 1.0])
    assert out["hitrate@2"].tolist() == [0.0, 1.0]


def test_ranking_metrics_reject_users_without_relevant_items():
    with pytest.raises(ValueError):
        M.ranking_metrics(np.zeros((1, 2), bool), np.array([0]), ks=[1])


def test_top_k_orders_best_first_breaks_ties_by_index_and_flags_minus_inf():
    scores = np.array(
        [[0.1, 0.9, 0.5, 0.9, -np.inf], [-np.inf, -np.inf, 1.0, -np.inf, -np.inf]], np.float32
    )
    idx, valid = M.top_k(scores, 3)
    assert idx[0].tolist() == [1, 3, 2]
    assert valid[0].tolist() == [True, True, True]
    assert idx[1, 0] == 2
    assert valid[1].tolist() == [True, False, False]


def test_top_k_boundary_ties_take_lower_index():
    scores = np.array([[1.0, 1.0, 1.0, 1.0, 2.0]], np.float32)
    idx, _ = M.top_k(scores, 2)
    assert idx[0].tolist() == [4, 0]


def test_reciprocal_rank_is_over_the_full_ranking():
    scores = np.array([[0.1, 0.9, 0.5, 0.3], [0.1, 0.9, 0.5, 0.3]], np.float32)
    relevant = np.array([[True, False, False, True], [False, False, False, False]])
    rr = M.reciprocal_rank(scores, relevant)
    assert rr.tolist() == pytest.approx([1 / 3, 0.0])


def test_popularity_percentile_mid_rank():
    pct = M.popularity_percentile(np.array([1, 1, 1, 0, 0]))
    assert pct.tolist() == pytest.approx([70, 70, 70, 20, 20])


def _dense_means(scores, relevant, ks):
    rows = [r for r, rel in enumerate(relevant) if len(rel)]
    idx, valid = M.top_k(scores[rows], max(ks))
    hits = np.stack([np.isin(idx[j], relevant[r]) for j, r in enumerate(rows)]) & valid
    per_user = M.ranking_metrics(hits, np.array([len(relevant[r]) for r in rows]), ks)
    return {f"{m}@{k}": float(per_user[f"{m}@{k}"].mean()) for m in ("recall", "ndcg") for k in ks}


@pytest.mark.parametrize("max_cells", [1, 3 * 50, 7 * 50, 10**9])
def test_blocked_metrics_equal_the_dense_matrix(max_cells):
    # 23 users x 50 items; some cells excluded (-inf), one user with nothing relevant,
    # one with fewer rankable items than K.
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((23, 50)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.2] = -np.inf
    scores[5, 8:] = -np.inf
    relevant = [np.sort(rng.choice(50, rng.integers(1, 6), replace=False)) for _ in range(23)]
    relevant[3] = np.zeros(0, dtype=np.int64)
    relevant[5] = np.array([2, 30])  # 30 is not rankable: never a hit
    calls = []

    def block(start, stop):
        calls.append(range(start, stop))
        return scores[start:stop].copy()

    ks = (5, 10)
    got = M.mean_ranking_metrics_in_blocks(block, relevant, ks, 50, max_cells=max_cells)
    want = _dense_means(scores, relevant, ks)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    # every user with relevant items scored once, no block over max_cells (or one row)
    scored = [r for c in calls for r in c]
    assert sorted(set(scored)) == scored and set(scored) >= set(range(23)) - {3}
    assert max(len(c) for c in calls) * 50 <= max(max_cells, 50)


def test_blocked_metrics_without_relevant_items_are_zero():
    def block(start, stop):
        return np.zeros((stop - start, 4), np.float32)

    out = M.mean_ranking_metrics_in_blocks(block, [np.zeros(0, np.int64)] * 3, (2,), 4)
    assert out == {"recall@2": 0.0, "ndcg@2": 0.0}
