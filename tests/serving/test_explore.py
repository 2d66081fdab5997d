"""The exploration slots: exact propensities, the protected top, the greedy list when off."""

from __future__ import annotations

import numpy as np
import pytest

from shortlist.serving.explore import (
    POLICY,
    ExplorationParams,
    explore,
    inclusion_probabilities,
    plan,
    slot_positions,
)


def test_slot_positions_lie_below_the_protected_top():
    assert slot_positions(20, 2, 3).tolist() == [8, 14]
    assert slot_positions(4, 2, 3).tolist() == [3]  # one position below the top 3
    assert slot_positions(3, 2, 3).tolist() == []
    assert slot_positions(20, 0, 3).tolist() == []


def test_off_reproduces_the_greedy_list():
    rng = np.random.default_rng(0)
    scores = np.sort(rng.normal(size=100))[::-1]
    for p in (ExplorationParams(slots=0), ExplorationParams(slots=2, protected=20)):
        x = explore(scores, 20, p, rng)
        assert x.order.tolist() == list(range(20))
        assert (x.propensities == 1.0).all() and not x.explored.any()
        assert x.policy == "deterministic" and x.expected_cost == 0.0
    # Too few candidates to choose from: greedy too.
    x = explore(scores[:20], 20, ExplorationParams(slots=2), rng)
    assert x.order.tolist() == list(range(20)) and x.policy == "deterministic"


def test_propensities_match_empirical_frequencies():
    rng = np.random.default_rng(42)
    n, k = 40, 10
    scores = np.linspace(1.0, 0.0, n)
    under = np.zeros(n, dtype=bool)
    under[[12, 15, 30, 33]] = True  # a few under-exposed items in the tail
    p = ExplorationParams(slots=2, protected=3, pool=20, underexposed_share=0.5)
    pl = plan(n, k, p, under)
    draws = 40_000
    counts: dict[tuple[int, int], int] = {}
    logged: dict[tuple[int, int], float] = {}
    for _ in range(draws):
        x = explore(scores, k, p, rng, under)
        for pos in np.flatnonzero(x.explored):
            key = (int(pos), int(x.order[pos]))
            counts[key] = counts.get(key, 0) + 1
            logged[key] = float(x.propensities[pos])
        assert x.order[:3].tolist() == [0, 1, 2]  # the protected top never moves
        assert len(set(x.order.tolist())) == k
    # Every (position, item) pair's frequency is the propensity logged with it.
    for key, c in counts.items():
        freq = c / draws
        se = np.sqrt(logged[key] * (1 - logged[key]) / draws)
        assert abs(freq - logged[key]) < 5 * se + 1e-9, (key, freq, logged[key])
    # The logged propensities are the planned ones, and each slot's sum to one.
    for pos, pool, prob in zip(pl.positions, pl.pools, pl.probabilities, strict=True):
        assert prob.sum() == pytest.approx(1.0)
        for item, q in zip(pool, prob, strict=True):
            if (int(pos), int(item)) in logged:
                assert logged[(int(pos), int(item))] == pytest.approx(q)
    # Under-exposed items get more than a uniform share of their slot.
    pool0 = pl.pools[0]
    assert pl.probabilities[0][pool0 == 12][0] > 1 / len(pool0)


def test_inclusion_probabilities_sum_to_the_list_length():
    under = np.zeros(60, dtype=bool)
    under[40] = True
    p = ExplorationParams(slots=3, protected=2, pool=30, underexposed_share=0.3)
    inc = inclusion_probabilities(60, 20, p, under)
    assert inc.sum() == pytest.approx(20.0)
    assert (inc[:17] == 1.0).all() and (inc[47:] == 0).all()


def test_expected_cost_is_the_mean_realised_loss():
    rng = np.random.default_rng(7)
    scores = np.sort(rng.exponential(size=80))[::-1]
    p = ExplorationParams(slots=2, protected=3, pool=30)
    greedy = scores[:20].sum()
    losses, expected = [], None
    for _ in range(20_000):
        x = explore(scores, 20, p, rng)
        losses.append(greedy - scores[x.order].sum())
        expected = x.expected_cost
        assert x.policy == POLICY
    assert expected > 0
    assert np.mean(losses) == pytest.approx(expected, rel=0.02)
