"""The harness on tiny fixtures whose metrics were worked out by hand."""

import math

import numpy as np
import pandas as pd
import pytest

from shortlist.eval.harness import evaluate, flatten, holdout_last
from shortlist.tracking import metric_key


class Fixed:
    """A recommender with given scores: one row per user, or one row for everybody."""

    def __init__(self, item_ids, rows: dict[str, list[float]] | list[float], name="fixed"):
        self.name = name
        self.item_ids = np.asarray(item_ids)
        self.rows = rows
        self.calls: list[list[str]] = []

    def fit(self, *a, **k):
        return self

    def score(self, user_ids):
        self.calls.append(list(user_ids))
        if isinstance(self.rows, dict):
            return np.array([self.rows[u] for u in user_ids], np.float32)
        return np.tile(np.array(self.rows, np.float32), (len(user_ids), 1))


def frame(pairs):
    return pd.DataFrame(
        {
            "user_id": [u for u, _ in pairs],
            "item_id": [i for _, i in pairs],
            "timestamp": np.arange(len(pairs), dtype=np.int64),
            "weight": np.ones(len(pairs), np.float32),
        }
    )


ITEMS = ["a", "b", "c", "d", "e"]


def test_metrics_seen_exclusion_coverage_and_popularity_by_hand():
    train = frame([("u1", "a"), ("u2", "b"), ("u2", "c")])
    test = frame([("u1", "b"), ("u1", "d"), ("u2", "a")])
    model = Fixed(ITEMS, {"u1": [5, 4, 3, 2, 1], "u2": [1, 5, 4, 3, 2]})
    res = evaluate(model, train, test, ks=[1, 2, 3], segments=["all"])
    seg = res["segments"]["all"]
    # u1: a excluded -> b c d e; rel {b, d}.  u2: b, c excluded -> d e a; rel {a}.
    assert seg["users"] == 2
    assert seg["recall@1"] == pytest.approx((1 / 2 + 0) / 2)  # would be 0 if a were kept
    assert seg["recall@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert seg["recall@3"] == pytest.approx((2 / 2 + 1) / 2)
    u1_ndcg3 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert seg["ndcg@3"] == pytest.approx((u1_ndcg3 + 1 / math.log2(4)) / 2)
    assert seg["mrr"] == pytest.approx((1 + 1 / 3) / 2)
    # top-2: u1 {b, c}, u2 {d, e} -> 4 of 5 items; popularity pct b, c = 70, d, e = 20.
    assert seg["coverage@2"] == pytest.approx(4 / 5)
    assert seg["popularity_percentile@2"] == pytest.approx(45.0)
    assert seg["coverage@1"] == pytest.approx(2 / 5)


def test_seen_items_never_recommended():
    rng = np.random.default_rng(0)
    items = [f"i{j}" for j in range(30)]
    users = [f"u{j}" for j in range(12)]
    train = frame([(u, i) for u in users for i in rng.choice(items, 8, replace=False)])
    seen = train.groupby("user_id")["item_id"].apply(set).to_dict()
    test = frame([(u, next(i for i in items if i not in seen[u])) for u in users])
    held = dict(zip(test.user_id, test.item_id, strict=True))
    # The model scores each user's train items highest, then the held-out item.
    rows = {
        u: [10.0 if i in seen[u] else 5.0 if i == held[u] else 0.0 for i in items] for u in users
    }
    res = evaluate(Fixed(items, rows), train, test, ks=[1, 8], segments=["all"])
    assert res["segments"]["all"]["recall@1"] == 1.0
    assert res["segments"]["all"]["mrr"] == 1.0
    # Control: without train interactions nothing is excluded and the seen items fill the list.
    empty = train.iloc[:0]
    res_leak = evaluate(Fixed(items, rows), empty, test, ks=[8], segments=["all"])
    assert res_leak["segments"]["all"]["recall@8"] == 0.0


def test_cold_items_cold_users_and_light_heavy_segments():
    items = ["a", "b", "c", "d", "e", "f"]
    train = frame([("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "c")])
    test = frame([("u1", "f"), ("u1", "d"), ("u3", "a")])
    model = Fixed(items, [6, 5, 4, 1, 2, 3])
    res = evaluate(model, train, test, ks=[1, 2, 3], heavy_user_quantile=0.5)
    s = res["segments"]
    assert res["cold_items"] == 3  # d, e, f have no train interaction
    # all: u1 ranks c f e d (rel f, d), u3 (cold user) ranks a b c f e d (rel a).
    assert s["all"]["users"] == 2
    assert s["all"]["recall@1"] == pytest.approx((0 + 1) / 2)
    assert s["all"]["recall@2"] == pytest.approx((1 / 2 + 1) / 2)
    assert s["cold_users"]["users"] == 1
    assert s["cold_users"]["recall@1"] == pytest.approx(1.0)
    # cold items ranked among themselves for u1: f e d -> f is a hit at rank 1.
    assert s["cold_items"]["users"] == 1
    assert s["cold_items"]["recall@1"] == pytest.approx(1 / 2)
    assert s["cold_items"]["recall@3"] == pytest.approx(1.0)
    assert s["cold_items"]["coverage@1"] == pytest.approx(1 / 3)
    # ... and over the full catalog: c f e d -> first cold hit at rank 2.
    assert s["cold_items_in_catalog"]["recall@1"] == pytest.approx(0.0)
    assert s["cold_items_in_catalog"]["mrr"] == pytest.approx(1 / 2)
    # train counts u1 = 2, u2 = 2 -> threshold 2: u1 light, nobody heavy; u3 is cold.
    assert s["light_users"]["users"] == 1
    assert s["heavy_users"]["users"] == 0


def test_catalog_reindexing_gives_unscored_items_minus_inf_and_drops_unknown_test_items():
    train = frame([("u1", "a")])
    test = frame([("u1", "b"), ("u1", "z")])  # z is outside the catalog
    model = Fixed(["c", "b", "a"], [3.0, 1.0, 2.0])  # knows nothing about d
    res = evaluate(model, train, test, ks=[1, 3], catalog=["a", "b", "c", "d"], segments=["all"])
    seg = res["segments"]["all"]
    assert res["dropped_test_interactions"] == 1
    assert seg["recall@1"] == 0.0 and seg["recall@3"] == 1.0
    assert seg["coverage@3"] == pytest.approx(2 / 4)  # c, b: a is seen, d unscorable


def test_batching_does_not_change_results():
    rng = np.random.default_rng(1)
    items = [f"i{j}" for j in range(40)]
    users = [f"u{j}" for j in range(25)]
    pairs = [(u, i) for u in users for i in rng.choice(items, 10, replace=False)]
    df = frame(pairs)
    train, test = df.iloc[::2], df.iloc[1::2]
    model = Fixed(items, {u: list(rng.random(40)) for u in users})
    full = evaluate(model, train, test, ks=[5, 10])
    small = evaluate(model, train, test, ks=[5, 10], batch_users=3)
    assert flatten(full) == pytest.approx(flatten(small))
    assert max(len(c) for c in model.calls[1:]) == 3


def _random_case(n_users=30, n_items=50, seed=2):
    rng = np.random.default_rng(seed)
    items = [f"i{j}" for j in range(n_items)]
    users = [f"u{j}" for j in range(n_users)]
    pairs = [(u, i) for u in users for i in rng.choice(items, 12, replace=False)]
    df = frame(pairs)
    train, test = df.iloc[::3], df.drop(df.index[::3])
    # Integer-valued scores: many ties, so the blocks must break them the same way too.
    rows = {u: list(rng.integers(0, 6, n_items).astype(float)) for u in users}
    return items, rows, train, test


def test_blocked_evaluation_equals_unblocked():
    items, rows, train, test = _random_case()
    full = evaluate(Fixed(items, rows), train, test, ks=[1, 5, 10, 20])
    assert full["blocks"] == 1 and full["block_users"] >= full["users"]
    # Blocks bounded by score cells: 100 cells over a 50-item catalog = 2 users a block.
    model = Fixed(items, rows)
    blocked = evaluate(model, train, test, ks=[1, 5, 10, 20], block_cells=100)
    assert blocked["block_users"] == 2 and max(len(c) for c in model.calls) == 2
    assert blocked["blocks"] == -(-full["users"] // 2)
    assert flatten(blocked) == pytest.approx(flatten(full))
    for seg in full["segments"]:  # every segment, coverage and popularity included
        assert blocked["segments"][seg] == pytest.approx(full["segments"][seg], nan_ok=True)
    # batch_users is a ceiling; block_cells still bounds it.
    assert evaluate(Fixed(items, rows), train, test, ks=[5], batch_users=7)["block_users"] == 7
    capped = evaluate(Fixed(items, rows), train, test, ks=[5], batch_users=7, block_cells=150)
    assert capped["block_users"] == 3


def test_block_size_is_bounded_by_cells_at_any_catalog_size():
    from shortlist.eval.harness import BATCH_CELLS, block_size

    assert block_size(1_000_000) * 1_000_000 <= BATCH_CELLS
    assert block_size(10_000_000, batch_users=4096) == 2
    assert block_size(10**9) == 1  # never zero
    assert block_size(10, batch_users=5) == 5


def test_user_sample_is_stated_and_seeded():
    items, rows, train, test = _random_case(n_users=40)
    full = evaluate(Fixed(items, rows), train, test, ks=[5], segments=["all"])
    a = evaluate(Fixed(items, rows), train, test, ks=[5], segments=["all"], sample_users=10)
    b = evaluate(Fixed(items, rows), train, test, ks=[5], segments=["all"], sample_users=10)
    assert a["users"] == 10 and a["user_sample"] == {"users": 10, "of": full["users"], "seed": 0}
    assert a["segments"] == b["segments"]
    assert "user_sample" not in full
    assert evaluate(Fixed(items, rows), train, test, ks=[5], sample_users=1000)["users"] == 40


def test_cell_cap_samples_users_by_catalog_size():
    items, rows, train, test = _random_case(n_users=40)
    n_items = len(items)
    capped = evaluate(
        Fixed(items, rows), train, test, ks=[5], segments=["all"], max_cells=12 * n_items
    )
    same = evaluate(Fixed(items, rows), train, test, ks=[5], segments=["all"], sample_users=12)
    assert capped["users"] == 12 and capped["user_sample"]["of"] == 40
    assert capped["segments"] == same["segments"]  # the same seeded sample
    # The smaller of the two limits applies; a cap above users x catalog changes nothing.
    both = evaluate(Fixed(items, rows), train, test, ks=[5], sample_users=5, max_cells=12 * n_items)
    assert both["users"] == 5
    assert evaluate(Fixed(items, rows), train, test, ks=[5], max_cells=10**9)["users"] == 40


def test_recommender_notes_reach_the_result():
    model = Fixed(ITEMS, [5, 4, 3, 2, 1])
    model.notes = ["fitted on a sample"]
    res = evaluate(model, frame([("u1", "a")]), frame([("u1", "b")]), ks=[1])
    assert res["notes"] == ["fitted on a sample"]


def test_nan_scores_and_wrong_shapes_are_errors():
    train, test = frame([("u1", "a")]), frame([("u1", "b")])
    with pytest.raises(ValueError, match="NaN"):
        evaluate(Fixed(ITEMS, [np.nan] * 5), train, test, ks=[1])
    with pytest.raises(ValueError, match="returned"):
        evaluate(Fixed(ITEMS, [1.0] * 4), train, test, ks=[1])


def test_holdout_last_takes_the_latest_floor_fraction_per_user():
    df = frame([("u1", f"i{j}") for j in range(10)] + [("u2", "x"), ("u2", "y")])
    first, held = holdout_last(df, 0.2, min_interactions=5)
    assert held["item_id"].tolist() == ["i8", "i9"]  # floor(0.2 * 10) = 2, the latest
    assert set(first["user_id"]) == {"u1", "u2"} and len(first) == 10  # u2 below minimum


def test_metric_key_has_no_at_sign():
    assert metric_key("all/recall@20") == "all/recall_at_20"


def test_holdout_last_breaks_time_ties_by_numeric_item_id():
    df = frame([("u1", str(i)) for i in (10, 9, 2, 1, 100)])
    df["timestamp"] = 7  # all at the same second
    _, held = holdout_last(df, 0.2, min_interactions=5)
    assert held["item_id"].tolist() == ["100"]  # lexically "9" would be last
