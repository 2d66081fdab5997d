"""`estimate_lists`: IPS, SNIPS and DR of a target list policy, by hand on a tiny log."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shortlist.eval.off_policy import estimate_lists, item_reward_model


def test_estimates_by_hand():
    logged = pd.DataFrame(
        {
            "request_id": ["r1", "r1", "r2", "r2"],
            "item_id": ["a", "b", "a", "c"],
            "propensity": [1.0, 0.5, 1.0, 0.5],
            "reward": [1.0, 0.0, 0.0, 1.0],
            "list_length": [2, 2, 2, 2],
        }
    )
    target = [1.0, 0.0, 1.0, 0.5]
    lists = {
        "r1": (np.array(["a", "d"], dtype=object), np.array([1.0, 1.0])),
        "r2": (np.array(["a", "c"], dtype=object), np.array([1.0, 0.5])),
    }
    out = estimate_lists(logged, target, lists, prior_strength=10.0)
    w = np.array([1.0, 0.0, 1.0, 1.0])
    r = logged["reward"].to_numpy()
    assert out["estimates"]["ips"]["value"] == pytest.approx((w * r).mean())  # 0.5
    assert out["estimates"]["snips"]["value"] == pytest.approx(2 / 3)
    assert out["logged_reward"]["value"] == pytest.approx(0.5)
    assert out["target_mass_on_logged"] == pytest.approx((0.5 + 0.75) / 2)
    # DR with the cross-fitted item model: r1's rows predicted from r2's and vice versa.
    q0 = {"a": 5 / 11, "c": 6 / 11}  # fitted on r2 (mean 0.5), for r1
    q1 = {"a": 6 / 11, "b": 5 / 11}  # fitted on r1 (mean 0.5), for r2
    v1 = (q0["a"] + 0.5) / 2  # d unseen: the mean
    v2 = (q1["a"] + 0.5 * 0.5) / 2
    terms = [v1 + (1 - q0["a"]), v1 + 0.0, v2 + (0 - q1["a"]), v2 + (1 - 0.5)]
    assert out["estimates"]["dr"]["value"] == pytest.approx(np.mean(terms))
    assert out["rows"] == 4 and out["requests"] == 2


def test_reward_model_is_cross_fitted():
    models, means = item_reward_model(["a", "a", "b"], [1.0, 0.0, 1.0], [0, 1, 1])
    assert means == [pytest.approx(0.5), pytest.approx(1.0)]
    assert models[0]["a"] == pytest.approx((0 + 10 * 0.5) / 11)  # from fold 1's rows only
    assert models[0]["b"] == pytest.approx((1 + 10 * 0.5) / 11)
    assert models[1]["a"] == pytest.approx((1 + 10 * 1.0) / 11)  # from fold 0's row only
    assert "b" not in models[1]
