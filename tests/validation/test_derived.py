"""Derived statistics on tiny hand-checked frames."""

from __future__ import annotations

import math

import pandas as pd

from shortlist.validation import derived


def interactions(users, items) -> pd.DataFrame:
    return pd.DataFrame({"user_id": users, "item_id": items, "timestamp": range(len(users))})


def test_references_flags_unknown_items_and_users_on_the_same_index():
    inter = interactions(["u1", "u2", "zz"], ["i1", "nope", "i2"])
    items = pd.DataFrame({"item_id": ["i1", "i2"]})
    users = pd.DataFrame({"user_id": ["u1", "u2"]})

    refs = derived.references(inter, items, users)

    assert refs["item_exists"].tolist() == [True, False, True]
    assert refs["user_exists"].tolist() == [True, True, False]
    assert refs.index.equals(inter.index)


def test_references_is_none_when_a_key_column_is_missing():
    inter = interactions(["u1"], ["i1"]).drop(columns="item_id")
    assert (
        derived.references(inter, pd.DataFrame({"item_id": []}), pd.DataFrame({"user_id": []}))
        is None
    )


def test_new_shares_count_interactions_on_unseen_ids():
    batch = interactions(["u1", "u1", "u9", "u9"], ["i1", "i7", "i7", "i8"])
    ref_inter = interactions(["u1"], ["i1"])
    ref_items = pd.DataFrame({"item_id": ["i1", "i2"]})
    ref_users = pd.DataFrame({"user_id": ["u1", "u2"]})

    row = derived.new_shares(batch, ref_inter, ref_items, ref_users).iloc[0]

    assert row["new_item_share"] == 0.75 and row["new_items"] == 2
    assert row["new_user_share"] == 0.5 and row["new_users"] == 1


def test_fold_change_is_symmetric_and_infinite_on_zero():
    assert derived.fold_change(4, 4) == 0.0
    assert derived.fold_change(8, 4) == derived.fold_change(2, 4) == 1.0
    assert math.isinf(derived.fold_change(0, 3))


def test_per_user_quantiles_compare_batch_with_reference():
    ref = interactions(["a", "a", "b", "b"], ["i"] * 4)  # 2 per user
    batch = interactions(["a"] * 4 + ["b"] * 4, ["i"] * 8)  # 4 per user

    frame = derived.per_user_quantiles(batch, ref, [0.5, 0.9])

    assert frame["reference"].tolist() == [2.0, 2.0]
    assert frame["observed"].tolist() == [4.0, 4.0]
    assert frame["fold_change"].tolist() == [1.0, 1.0]
