"""The streaming frequency estimator (Yi et al. 2019) against a stream with known frequencies."""

from __future__ import annotations

import numpy as np
import pytest

from shortlist.models import logq
from shortlist.models.logq import StreamingFrequencyEstimator


def _stream(n_events: int, seed: int = 0):
    """60 items with frequencies from 1/1000 to 1/100, plus a long tail of rare ids."""
    rng = np.random.default_rng(seed)
    head = np.geomspace(1 / 1000, 1 / 100, 60)
    tail_mass = 1.0 - head.sum()
    tail = np.full(20_000, tail_mass / 20_000)  # about 1/40000 each: far below 1/1000
    freqs = np.concatenate([head, tail])
    ids = rng.choice(len(freqs), size=n_events, p=freqs / freqs.sum())
    return ids, freqs


def test_estimates_within_ten_percent_after_warm_up():
    ids, freqs = _stream(2_000_000)
    est = StreamingFrequencyEstimator(hash_buckets=1 << 20, alpha=0.001)
    for start in range(0, len(ids), 8192):
        est.update(ids[start : start + 8192], start)
    frequent = np.flatnonzero(freqs >= 1 / 1000)
    assert len(frequent) == 60
    p = est.probability(frequent)
    rel_err = np.abs(p - freqs[frequent]) / freqs[frequent]
    assert rel_err.max() < 0.10, f"worst relative error {rel_err.max():.3f}"
    # Orders of magnitude apart stay ordered: the head item is ~10x the 1/1000 item.
    assert p[-1] / p[0] > 8


def test_string_ids_and_batch_duplicates_match_one_by_one_stream():
    rng = np.random.default_rng(1)
    ids = rng.choice(["a", "b", "c", "d"], size=500, p=[0.5, 0.3, 0.15, 0.05])
    batched = StreamingFrequencyEstimator(hash_buckets=1024, alpha=0.05)
    single = StreamingFrequencyEstimator(hash_buckets=1024, alpha=0.05)
    for start in range(0, len(ids), 64):
        batched.update(ids[start : start + 64], start)
    for step, i in enumerate(ids):
        single.update([i], step)
    keys = ["a", "b", "c", "d"]
    np.testing.assert_allclose(batched.probability(keys), single.probability(keys))
    assert batched.probability(["a"])[0] > batched.probability(["d"])[0]


def test_unseen_ids_get_the_floor():
    est = StreamingFrequencyEstimator(hash_buckets=64, alpha=0.1)
    est.update(np.array([1, 2, 1, 2, 1, 2]), 0)
    p = est.probability(np.array([1, 999]))
    assert p[0] > 0.3
    assert p[1] == 1 / 6


@pytest.mark.parametrize("warm", [False, True])
def test_the_scan_equals_the_occurrence_loop(monkeypatch, warm):
    """Whole epochs take the O(n) scan; it must give what the per-occurrence loop gives."""
    rng = np.random.default_rng(7)
    ids = rng.zipf(1.3, 50_000) % 3000  # a popular head repeated thousands of times
    pre = rng.integers(0, 200, 2000)
    ests = []
    for cells in (10**18, 0):  # the loop, then the scan
        monkeypatch.setattr(logq, "LOOP_MAX_CELLS", cells)
        est = StreamingFrequencyEstimator(hash_buckets=1 << 12, alpha=0.01)
        if warm:
            est.update(pre, 0)
        est.update(ids, 2000)
        ests.append(est)
    loop, scan = ests
    np.testing.assert_array_equal(loop.last_seen, scan.last_seen)
    np.testing.assert_array_equal(loop.gaps_seen, scan.gaps_seen)
    np.testing.assert_allclose(scan.gap, loop.gap, rtol=1e-8, atol=0)
    assert loop.steps_seen == scan.steps_seen
