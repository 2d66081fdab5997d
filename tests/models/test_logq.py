"""The streaming frequency estimator (Yi et al. 2019) against a stream with known frequencies."""

from __future__ import annotations

import numpy as np

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
