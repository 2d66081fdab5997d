"""The ranker's orchestration helpers that bound its cost at scale."""

from __future__ import annotations

import pandas as pd

from shortlist.ranking.train import sample_users


def _frame(n_users: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"user_id": [f"u{u}" for u in range(n_users) for _ in range(3)], "item_id": "i"}
    )


def test_sample_users_keeps_every_row_of_a_seeded_subset() -> None:
    frame = _frame(50)
    kept, counts = sample_users(frame, 10, seed=3)
    assert counts == {"validation": 50, "used": 10}
    assert kept["user_id"].nunique() == 10 and len(kept) == 30  # all three rows of each
    again, _ = sample_users(frame, 10, seed=3)
    assert kept.equals(again)
    other, _ = sample_users(frame, 10, seed=4)
    assert set(other["user_id"]) != set(kept["user_id"])


def test_sample_users_is_a_no_op_under_the_cap_or_at_zero() -> None:
    frame = _frame(5)
    for cap in (0, 5, 100):
        kept, counts = sample_users(frame, cap, seed=0)
        assert kept is frame and counts == {"validation": 5, "used": 5}
