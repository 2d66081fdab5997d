"""The ranker's ship decision on hand-computed paired cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shortlist.ranking.decision import decide


def test_a_clear_gain_ships():
    # differences 0.1, 0.1, 0.2, 0.2: mean 0.15, sample std 0.057735, stderr 0.028868
    d = decide(
        np.array([0.6, 0.5, 0.7, 0.4]), np.array([0.5, 0.4, 0.5, 0.2]), metric="ndcg@20", min_z=1.0
    )
    assert d.shipped
    assert d.gain == pytest.approx(0.15)
    assert d.stderr == pytest.approx(0.057735 / 2, rel=1e-4)
    assert d.retrieval == pytest.approx(0.4) and d.relative_gain == pytest.approx(0.375)
    assert "ships" in d.reason and "4 held-out requests" in d.reason


def test_a_gain_within_noise_does_not_ship():
    # differences +0.3, -0.2, +0.2, -0.1: mean 0.05, std 0.238048, stderr 0.119024 > 0.05
    d = decide(
        np.array([0.8, 0.3, 0.7, 0.4]), np.array([0.5, 0.5, 0.5, 0.5]), metric="ndcg@20", min_z=1.0
    )
    assert not d.shipped
    assert d.gain == pytest.approx(0.05) and d.stderr == pytest.approx(0.119024, rel=1e-4)
    assert "does not ship" in d.reason
    # the same gain ships when the bar is lowered below it
    assert decide(np.array([0.8, 0.3, 0.7, 0.4]), np.full(4, 0.5), metric="m", min_z=0.4).shipped


def test_a_loss_never_ships_whatever_the_bar():
    d = decide(np.array([0.1, 0.2]), np.array([0.3, 0.4]), metric="ndcg@20", min_z=-10.0)
    assert not d.shipped and d.gain == pytest.approx(-0.2)


def test_too_few_requests_do_not_ship():
    d = decide(np.array([1.0]), np.array([0.0]), metric="ndcg@20", min_z=0.0)
    assert not d.shipped and d.requests == 1 and math.isinf(d.stderr)
    with pytest.raises(ValueError, match="shape"):
        decide(np.zeros(3), np.zeros(2), metric="m", min_z=1.0)
