"""Random negatives for the ranker: outside what the request already holds, uniform, and
in O(k) per request at a large catalog."""

from __future__ import annotations

import numpy as np
import pytest

from shortlist.ranking import featurize
from shortlist.ranking.featurize import sample_outside


@pytest.mark.parametrize("threshold", [10**9, 0])  # the listed pool, then rejection
def test_negatives_are_distinct_outside_taken_and_uniform(monkeypatch, threshold):
    monkeypatch.setattr(featurize, "REJECTION_MIN_ITEMS", threshold)
    rng = np.random.default_rng(0)
    taken = np.array([0, 3, 7])
    counts = np.zeros(10)
    for _ in range(14_000):
        neg = sample_outside(rng, 10, taken, 2)
        assert len(set(neg.tolist())) == 2 and not np.isin(neg, taken).any()
        counts[neg] += 1
    free = np.setdiff1d(np.arange(10), taken)
    assert counts[taken].sum() == 0
    # 4,000 expected draws of each of the 7 free items; 5 standard deviations is ~300.
    assert np.abs(counts[free] - 4_000).max() < 300


def test_small_catalogs_keep_the_listed_pool_stream():
    taken = np.array([1, 2])
    got = sample_outside(np.random.default_rng(5), 40, taken, 4)
    pool = np.setdiff1d(np.arange(40), taken)
    assert np.array_equal(got, np.random.default_rng(5).choice(pool, size=4, replace=False))


def test_asking_for_more_than_is_free_returns_everything_free():
    got = sample_outside(np.random.default_rng(1), 6, np.array([0, 1, 2]), 10)
    assert sorted(got.tolist()) == [3, 4, 5]
