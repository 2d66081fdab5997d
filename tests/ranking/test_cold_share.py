"""The bound on items without interactions, on hand-made lists and score matrices."""

from __future__ import annotations

import numpy as np

from shortlist.eval.metrics import top_k
from shortlist.ranking.cold_share import cap_cold_order, cap_cold_scores, cold_slots


def test_slots():
    assert cold_slots(20, 0.1) == 2 and cold_slots(20, 0.0) == 0 and cold_slots(10, 1.0) == 10
    assert cold_slots(3, 0.5) == 1 and cold_slots(20, 0.15) == 3


def test_order_keeps_the_best_cold_items_and_pushes_the_rest_past_k():
    #          0  1  2  3  4  5  6  7
    cold = [1, 1, 0, 1, 0, 0, 1, 0]
    order = cap_cold_order(np.array(cold, bool), k=4, max_share=0.25)  # 1 cold slot
    assert order.tolist() == [0, 2, 4, 5, 1, 3, 6, 7]
    assert sum(np.array(cold)[order[:4]]) == 1
    assert sorted(order.tolist()) == list(range(8))  # a permutation
    # under the cap nothing moves
    assert cap_cold_order(np.array(cold, bool), k=4, max_share=1.0).tolist() == list(range(8))


def test_scores_cap_matches_the_order_rule():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 30))
    cold_cols = np.arange(0, 30, 3)  # 10 cold columns
    scores[:, cold_cols] += 2.0  # cold items would dominate the lists
    capped = cap_cold_scores(scores.copy(), cold_cols, k=10, max_share=0.2)
    idx, _ = top_k(capped, 10)
    is_cold = np.isin(idx, cold_cols)
    assert (is_cold.sum(axis=1) <= 2).all() and (is_cold.sum(axis=1) == 2).all()
    for r in range(50):  # the same lists as the order rule on the uncapped ranking
        full = np.argsort(-scores[r], kind="stable")
        order = cap_cold_order(np.isin(full, cold_cols), 10, 0.2)
        assert set(full[order[:10]]) == set(idx[r])
    assert np.isfinite(cap_cold_scores(scores.copy(), cold_cols, 10, 1.0)).all()
