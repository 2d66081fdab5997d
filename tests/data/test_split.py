"""Temporal split invariants: time order, no overlap, per-user fractions, cold sets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shortlist.data.split import (
    cold_ids,
    global_cutoffs,
    per_user_counts,
    summary,
    temporal_split,
)
from shortlist.errors import ShortlistError

KEY = ["user_id", "item_id", "timestamp", "weight"]


@pytest.fixture(scope="module")
def interactions() -> pd.DataFrame:
    """Random interactions with many timestamp ties and users of every history length."""
    rng = np.random.default_rng(3)
    n = 20_000
    users = rng.zipf(1.5, n) % 700
    return pd.DataFrame(
        {
            "user_id": [f"u{x}" for x in users],
            "item_id": [f"i{x}" for x in rng.integers(0, 900, n)],
            "timestamp": rng.integers(1_000, 1_000 + 5_000, n).astype(np.int64),
            "weight": rng.integers(1, 6, n).astype(np.float32),
        }
    )


def _as_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[KEY].sort_values(KEY).reset_index(drop=True)


def _assert_partition(original: pd.DataFrame, result) -> None:
    """Every input row lands in exactly one part (as a multiset)."""
    together = pd.concat([result.train, result.validation, result.test])
    pd.testing.assert_frame_equal(_as_rows(together), _as_rows(original), check_dtype=False)


def test_global_time_order_and_fractions(interactions):
    r = temporal_split(interactions, mode="global", validation_fraction=0.1, test_fraction=0.2)
    _assert_partition(interactions, r)
    t1, t2 = r.cutoffs["validation_start"], r.cutoffs["test_start"]
    assert r.train["timestamp"].max() < t1 <= r.validation["timestamp"].min()
    assert r.validation["timestamp"].max() < t2 <= r.test["timestamp"].min()
    n = len(interactions)
    assert abs(len(r.test) / n - 0.2) < 0.01
    assert abs(len(r.validation) / n - 0.1) < 0.01
    for part in (r.train, r.validation, r.test):  # written in time order
        assert part["timestamp"].is_monotonic_increasing


def test_global_cutoffs_edge_cases():
    ts = np.array([5, 1, 3, 2, 4, 6, 7, 8, 9, 10])
    assert global_cutoffs(ts, 0.2, 0.3) == (6, 8)
    assert global_cutoffs(ts, 0.0, 0.3) == (8, 8)
    assert global_cutoffs(ts, 0.2, 0.0) == (9, None)
    assert global_cutoffs(np.array([], dtype=np.int64), 0.1, 0.1) == (None, None)


def test_test_fraction_zero_gives_empty_test_with_schema(interactions):
    r = temporal_split(interactions, mode="global", validation_fraction=0.1, test_fraction=0.0)
    assert len(r.test) == 0 and r.test.columns.tolist() == KEY
    assert r.cutoffs["test_start"] is None and len(r.validation) > 0
    r = temporal_split(interactions, mode="per_user", validation_fraction=0.1, test_fraction=0.0)
    assert len(r.test) == 0 and r.test.columns.tolist() == KEY
    _assert_partition(interactions, r)


def test_per_user_order_and_fractions(interactions):
    r = temporal_split(
        interactions,
        mode="per_user",
        validation_fraction=0.1,
        test_fraction=0.2,
        min_user_interactions=5,
    )
    _assert_partition(interactions, r)
    sizes = interactions.groupby("user_id").size()
    n_val, n_test = per_user_counts(sizes.to_numpy(), 0.1, 0.2, 5)
    expect = pd.DataFrame({"validation": n_val, "test": n_test}, index=sizes.index)
    got_val = r.validation.groupby("user_id").size().reindex(sizes.index, fill_value=0)
    got_test = r.test.groupby("user_id").size().reindex(sizes.index, fill_value=0)
    assert (got_val == expect["validation"]).all() and (got_test == expect["test"]).all()
    small = sizes.index[sizes < 5]
    assert len(small) > 0 and not r.test["user_id"].isin(small).any()
    assert not r.validation["user_id"].isin(small).any()

    # Each user's parts follow one another in (timestamp, item_id) order.
    def bounds(df, how):
        keyed = df.assign(key=list(zip(df["timestamp"], df["item_id"], strict=True)))
        return keyed.groupby("user_id")["key"].agg(how)

    for early, late in ((r.train, r.validation), (r.validation, r.test), (r.train, r.test)):
        hi, lo = bounds(early, "max"), bounds(late, "min")
        common = hi.index.intersection(lo.index)
        assert len(common) > 0
        assert all(hi[u] <= lo[u] for u in common)


def test_per_user_counts_rules():
    n_val, n_test = per_user_counts(np.array([1, 2, 3, 10, 20, 4]), 0.1, 0.1, 4)
    assert n_test.tolist() == [0, 0, 0, 1, 2, 1]
    assert n_val.tolist() == [0, 0, 0, 1, 2, 1]
    n_val, n_test = per_user_counts(np.array([1, 2, 3]), 0.1, 0.1, 1)
    assert n_test.tolist() == [0, 1, 1] and n_val.tolist() == [0, 0, 1]  # train keeps one


def test_deterministic_under_row_order(interactions):
    shuffled = interactions.sample(frac=1.0, random_state=1).reset_index(drop=True)
    for mode in ("global", "per_user"):
        a = temporal_split(interactions, mode=mode, validation_fraction=0.1, test_fraction=0.1)
        b = temporal_split(shuffled, mode=mode, validation_fraction=0.1, test_fraction=0.1)
        for x, y in zip(a.parts().values(), b.parts().values(), strict=True):
            pd.testing.assert_frame_equal(x, y)


def test_cold_sets_and_summary(interactions):
    r = temporal_split(interactions, mode="global", validation_fraction=0.1, test_fraction=0.1)
    cold = cold_ids(r)
    assert cold.columns.tolist() == ["kind", "id", "part"]
    for kind, col in (("item", "item_id"), ("user", "user_id")):
        for part in ("validation", "test"):
            expect = set(getattr(r, part)[col]) - set(r.train[col])
            got = set(cold.loc[(cold["kind"] == kind) & (cold["part"] == part), "id"])
            assert got == expect
    assert len(cold) > 0
    s = summary(r, cold)
    assert s["counts"]["train"] + s["counts"]["validation"] + s["counts"]["test"] == len(
        interactions
    )
    assert s["counts"]["users"] == interactions["user_id"].nunique()
    assert s["parts"]["test"]["users"] == r.test["user_id"].nunique()
    n_cold_users = ((cold["kind"] == "user") & (cold["part"] == "test")).sum()
    assert s["cold"]["test"]["users"] == n_cold_users


def test_bad_params_are_errors(interactions):
    with pytest.raises(ShortlistError, match="below 1"):
        temporal_split(interactions, validation_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ShortlistError, match="unknown split mode"):
        temporal_split(interactions, mode="sideways")
