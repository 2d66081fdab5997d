"""Inverse-propensity weights of the ranker's positives, checked by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shortlist.ranking.propensity import propensity_factors, reweight
from shortlist.ranking.requests import make_requests


def _exposures() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2", "u2", None],
            "item_id": ["i1", "i2", "i3", "i1", "i1", "i1"],
            "propensity": [0.25, 0.05, 0.5, 0.2, 0.5, 0.1],
            "engaged": [True, True, False, True, True, True],
        }
    )


def _interactions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2", "u3"],
            "item_id": ["i1", "i2", "i3", "i1", "i1"],
            "timestamp": [10, 11, 12, 10, 10],
            "weight": [3.0, 1.0, 2.0, 1.0, 5.0],
        }
    )


def test_factors_are_clipped_inverse_propensities_of_engaged_exposures():
    f = propensity_factors(_exposures(), clip=10.0)
    # u1,i1: 1/0.25 = 4; u1,i2: 1/0.05 = 20 clipped to 10; u1,i3 was not engaged;
    # u2,i1 engaged twice (0.2 and 0.5): the larger propensity, 1/0.5 = 2; the anonymous
    # row credits nobody.
    assert f.to_dict() == {("u1", "i1"): 4.0, ("u1", "i2"): 10.0, ("u2", "i1"): 2.0}


def test_reweight_multiplies_only_rows_from_engaged_exposures():
    out, stats = reweight(_interactions(), _exposures(), clip=10.0)
    assert out["weight"].tolist() == [12.0, 10.0, 2.0, 2.0, 5.0]
    assert stats == {"reweighted": 3, "clipped": 1, "mean_factor": pytest.approx(16 / 3)}
    assert _interactions()["weight"].tolist() == [3.0, 1.0, 2.0, 1.0, 5.0]  # input untouched


def test_no_exposures_changes_nothing():
    inter = _interactions()
    out, stats = reweight(inter, None, clip=10.0)
    assert out["weight"].tolist() == inter["weight"].tolist()
    assert stats["reweighted"] == 0


def test_a_clip_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        propensity_factors(_exposures(), clip=0.5)


def test_the_ranker_labels_carry_the_weights():
    # make_requests takes the max weight per (request, item): the reweighted positives.
    out, _ = reweight(_interactions(), _exposures(), clip=10.0)
    index = {"i1": 0, "i2": 1, "i3": 2}
    reqs = {r.user_id: r for r in make_requests(out, out.iloc[:0], index)}
    assert reqs["u1"].positives == {0: 12.0, 1: 10.0, 2: 2.0}
    assert reqs["u2"].positives == {0: 2.0}
    assert np.array_equal(reqs["u3"].exclude, np.array([], np.int64))
