"""The closed-loop simulator: its measures by hand, and a two-round loop end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shortlist import simulate


def test_gini_by_hand():
    assert simulate.gini(np.array([1, 1, 1, 1])) == pytest.approx(0.0)
    # One of four holds everything: (2 * 4 * 1) / (4 * 1) - 5 / 4 = 0.75.
    assert simulate.gini(np.array([0, 0, 0, 5])) == pytest.approx(0.75)
    # Sorted [1, 3]: 2 * (1 + 6) / (2 * 4) - 3 / 2 = 0.25.
    assert simulate.gini(np.array([3, 1])) == pytest.approx(0.25)
    assert simulate.gini(np.zeros(3)) == 0.0


def test_mean_pairwise_overlap_by_hand():
    lists = [["a", "b"], ["b", "c"], ["d", "e"]]
    # Pairs: {a,b}&{b,c} = 1/3, {a,b}&{d,e} = 0, {b,c}&{d,e} = 0 -> mean 1/9.
    assert simulate.mean_pairwise_overlap(lists) == pytest.approx(1 / 9)
    assert simulate.mean_pairwise_overlap([["a", "b"]] * 3) == pytest.approx(1.0)
    assert simulate.mean_pairwise_overlap([["a"]]) == 0.0


def test_truth_is_the_worlds_taste_and_position_bias():
    spec = simulate.SimSpec(users=20, items=30, interactions=200, topics=4)
    truth = simulate.Truth(spec, now=1.8e9)
    w = truth.world
    taste = w.taste(np.array([3]), np.array([truth.synth.end_timestamp]), truth.synth)[0]
    expected = 1 / (1 + np.exp(-(taste @ w.item_factors[[5, 7]].T - spec.pref_offset)))
    np.testing.assert_allclose(truth.preference("u3", ["i5", "i7"]), expected, rtol=1e-5)
    np.testing.assert_allclose(
        truth.click_probability("u3", ["i5", "i7"]), expected * [1.0, 1 / np.log2(3)], rtol=1e-5
    )


@pytest.mark.e2e
@pytest.mark.slow
def test_two_rounds_of_the_loop_through_the_real_parts(params, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    p = params.with_overrides(
        {
            "mlflow.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "towers.epochs": 2,
            "towers.threads": 1,
            "ranker.epochs": 2,
            "ranker.threads": 1,
            "evaluation.threads": 1,
            "split.min_validation_users": 10,
            # Validation = each user's latest items (the clicks of the simulated rounds),
            # where the ranker trains: so round 2's ranker sees logged exposures.
            "split.test_fraction": 0.0,
        }
    )
    spec = simulate.SimSpec(
        users=40, items=80, interactions=1000, topics=4, rounds=2, k=5, promote="always"
    )
    seen = []
    result = simulate.simulate(
        p,
        spec,
        tmp_path / "sim",
        policies={"exploration_ips": simulate.POLICIES["exploration_ips"]},
        bandit_users=30,
        on_round=seen.append,
    )
    rounds = result["policies"][0]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and seen == rounds
    for r in rounds:
        assert r["lists"] == 40 and r["retrained"] and r["promoted"]
        assert r["feedback"]["exposures"] == 40 * 5  # every shown item joined
        assert 0 < r["true_utility"] < 1 and 0 < r["coverage"] <= 1
        assert 0 <= r["overlap"] <= 1 and 0 <= r["gini"] < 1
        assert r["bundles"] and "bandit" not in r["bundles"]
    # Round 2 served the bundle round 1 promoted, and retrained on landed exposures with
    # propensity weighting on.
    assert rounds[1]["bundles"] != rounds[0]["bundles"]
    assert rounds[1]["ranker_ips"]["reweighted"] > 0
    ope = rounds[1]["off_policy"]
    assert ope["available"] and 0 <= ope["truth"] <= 1
    assert ope["snips"]["ci"][0] <= ope["snips"]["value"] <= ope["snips"]["ci"][1]
    work = tmp_path / "sim" / "exploration_ips"
    exposures = pd.read_parquet(work / "data" / "exposures.parquet")
    assert len(exposures) == 2 * 40 * 5 and exposures["propensity"].between(0, 1).all()
    assert (exposures["propensity"] < 1).any()  # exploration slots were logged as such
    bandit = result["bandit_first_users"]
    assert bandit["users"] == 30 and set(bandit) >= {"bandit", "popularity", "random"}
    assert result["summary"]["exploration_ips"]["retrains"] == 2
    assert (tmp_path / "sim" / "simulation.json").exists()

    import mlflow

    mlflow.set_tracking_uri(p.mlflow.tracking_uri)
    runs = mlflow.search_runs(
        experiment_names=[p.mlflow.experiment], filter_string="tags.`shortlist.stage` = 'simulate'"
    )
    assert len(runs) == 1 and runs["status"].iloc[0] == "FINISHED"
    history = mlflow.MlflowClient().get_metric_history(runs["run_id"].iloc[0], "true_utility")
    assert [m.step for m in history] == [1, 2]
