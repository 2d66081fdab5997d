"""Point-in-time correctness of the ranking features, including the leakage test.

The leakage test recomputes every feature of an example after replacing all events at or
after the example's timestamp with arbitrary ones (and adding events at exactly that
second). A point-in-time correct pipeline cannot tell the difference; disabling the guard
(`EventLog(point_in_time=False)`) must make the test see the leak.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from shortlist.ranking.candidates import Retrieval
from shortlist.ranking.cooccurrence import ItemNeighbours
from shortlist.ranking.event_log import EventLog
from shortlist.ranking.features import GROUPS, FeatureSpace, Request
from shortlist.ranking.featurize import featurize
from shortlist.ranking.requests import LabeledRequest
from tests.ranking.fakes import DAY, T0, FakeRetriever, tiny_data


@pytest.fixture(scope="module")
def world():
    inter, items, users = tiny_data()
    space = FeatureSpace.fit(items, users, inter["user_id"].unique(), windows_days=[1, 7, 30])
    # The co-occurrence table is a snapshot fitted before every request of the test.
    space.neighbours = ItemNeighbours.fit(
        inter[inter["timestamp"] < T0 + 20 * DAY], space.item_index(), neighbours=5, shrink=1.0
    )
    retrieval = Retrieval(FakeRetriever(items["item_id"]), items, items["item_id"], users)
    return inter, items, users, space, retrieval


def _perturb_future(inter: pd.DataFrame, t: int, user: str, seed: int) -> pd.DataFrame:
    """Keep events before t; replace the rest by random events at or after t."""
    rng = np.random.default_rng(seed)
    past = inter[inter["timestamp"] < t]
    n = max(len(inter) - len(past), 50)
    users = np.r_[[user] * 10, rng.choice(inter["user_id"].unique(), n - 10)]
    fake = pd.DataFrame(
        {
            "user_id": users,
            "item_id": rng.choice(inter["item_id"].unique(), n),
            "timestamp": t + np.r_[np.zeros(5, np.int64), rng.integers(0, 40 * DAY, n - 5)],
            "weight": np.float32(5.0),
        }
    )
    return pd.concat([past, fake], ignore_index=True)


def _features(space, retrieval, inter, req, point_in_time):
    log = EventLog(inter, space.item_index(), point_in_time=point_in_time)
    ex = featurize(space, log, retrieval, [req], n_candidates=8, random_negatives=3, seed=1)
    return {
        "rows": ex.rows,
        "dense": ex.dense,
        "user_idx": ex.user_idx,
        "item_idx": ex.item_idx,
        "retrieval": ex.retrieval,
    }


def leaked_features(world, point_in_time: bool) -> list[str]:
    """Names of outputs that changed when only the future changed (empty: no leak)."""
    inter, _, _, space, retrieval = world
    changed: set[str] = set()
    for k, t in enumerate([T0 + 20 * DAY, T0 + 35 * DAY, T0 + 50 * DAY]):
        user = f"u{k * 7}"
        req = LabeledRequest(user, t, positives={0: 5.0}, exclude=np.array([], np.int64))
        a = _features(space, retrieval, inter, req, point_in_time)
        b = _features(space, retrieval, _perturb_future(inter, t, user, seed=k), req, point_in_time)
        for name in a:
            if a[name].shape != b[name].shape or not np.array_equal(a[name], b[name]):
                changed.add(name)
        if a["dense"].shape == b["dense"].shape:
            cols = np.flatnonzero((a["dense"] != b["dense"]).any(0))
            changed.update(f"dense[{space.feature_names()[c][0]}]" for c in cols)
    return sorted(changed)


def test_no_feature_sees_the_future(world):
    assert leaked_features(world, point_in_time=True) == []


def test_leakage_test_detects_a_disabled_guard(world):
    leaks = leaked_features(world, point_in_time=False)
    # Without the guard, future events reach the history (retrieval score, candidates,
    # crosses, activity) and the item statistics (popularity, trend, age).
    assert "retrieval" in leaks
    names = " ".join(leaks)
    assert "pop_log_count_all" in names
    assert "user_log_history_len" in names
    assert "genre_affinity_all" in names
    assert "cooc_log_score" in names


def test_event_log_counts_strictly_before_t():
    inter = pd.DataFrame(
        {
            "user_id": ["a", "a", "b", "b", "c"],
            "item_id": ["x", "y", "x", "x2", "x"],
            "timestamp": [100, 200, 200, 300, 50],
            "weight": np.float32(1),
        }
    )
    log = EventLog(inter, {"x": 0, "y": 1, "x2": 2})
    # x at 50, 100, 200: strictly before 200 -> 2; before 201 -> 3.
    assert log.item_count_before(np.array([0, 0, 1]), np.array([200, 201, 200])).tolist() == [
        2,
        3,
        0,
    ]
    assert log.item_first_seen(np.array([0, 1, 2]), 200).tolist()[:1] == [50]
    assert log.item_first_seen(np.array([1]), 200)[0] == np.iinfo(np.int64).max
    items, ts = log.user_history("a", 200)
    assert items.tolist() == ["x"] and ts.tolist() == [100]
    assert log.user_history("nobody", 10**10)[0].tolist() == []
    assert log.asof(10**10) == 301 and log.asof(150) == 101
    unguarded = EventLog(inter, {"x": 0, "y": 1, "x2": 2}, point_in_time=False)
    assert unguarded.item_count_before(np.array([0]), 60)[0] == 3


def test_transform_layout_and_unknown_items(world):
    _, _, _, space, _ = world
    req = Request("u1", T0, ["i0", "i4", "zzz"], np.array([0, 1, -1]), np.array([0.9, 0.5, 0.1]))
    pop = np.zeros((3, len([n for n, g in space.feature_names() if g == "popularity"])), np.float32)
    dense, uidx, iidx = space.transform(req, pop)
    names = [n for n, _ in space.feature_names()]
    assert dense.shape == (3, len(names)) and np.isfinite(dense).all()
    assert uidx > 0 and iidx.tolist() == [1, 2, 0]
    col = {n: k for k, n in enumerate(names)}
    assert dense[:, col["retrieval_log_rank"]].tolist() == pytest.approx(np.log1p([1, 2, 3]))
    # i0 is Action (+Comedy); the user's history (i0, i4) is all Action: full affinity.
    assert dense[0, col["genre_affinity_all"]] > dense[1, col["genre_affinity_all"]]
    assert dense[2, col["genre=Action"]] == 0  # unknown item: zero content
    assert set(GROUPS) >= {g for _, g in space.feature_names()}


def test_a_saved_space_with_an_unsupported_group_is_refused(world):
    _, _, _, space, _ = world
    meta, arrays = space.state()
    assert FeatureSpace.from_state(meta, arrays).feature_names() == space.feature_names()
    with pytest.raises(ValueError, match="unsupported groups"):
        FeatureSpace.from_state({**meta, "groups": [*meta["groups"], "context"]}, arrays)


def test_item_positions_accept_strings_numpy_strings_and_ints(world):
    _, _, _, space, _ = world
    numeric = dataclasses.replace(
        space, item_ids=np.array([str(10 * (k + 1)) for k in range(space.n_items)], object)
    )
    assert numeric.item_positions(["20", "zzz"]).tolist() == [1, -1]
    assert numeric.item_positions(np.array(["30", "10"])).tolist() == [2, 0]  # numpy strings
    assert numeric.item_positions(pd.Index(["10"])).tolist() == [0]
    assert numeric.item_positions([20, 7]).tolist() == [1, -1]  # ints: looked up as strings


def test_features_read_only_the_last_feature_history_items(world):
    # Serving passes at most bundle.history_len items: training must not see more.
    from shortlist.ranking.features import FEATURE_HISTORY

    _, items, _, space, _ = world
    ids = list(items["item_id"])
    long = [ids[(3 * k) % len(ids)] for k in range(FEATURE_HISTORY + 57)]
    n_pop = sum(g == "popularity" for _, g in space.feature_names())
    pop = np.zeros((3, n_pop), np.float32)

    def dense(history):
        req = Request("u1", T0, history, np.array([0, 1, 2]), np.array([0.9, 0.5, 0.1]))
        return space.transform(req, pop)[0]

    np.testing.assert_array_equal(dense(long), dense(long[-FEATURE_HISTORY:]))
    assert not np.array_equal(dense(long[-FEATURE_HISTORY:]), dense(long[-50:]))


def test_feature_space_round_trip(world):
    _, _, _, space, _ = world
    space.fit_standardisation(np.random.default_rng(0).normal(size=(10, space.n_dense)))
    meta, arrays = space.state()
    back = FeatureSpace.from_state(meta, arrays)
    req = Request("u3", T0 + 5, ["i1"], np.array([2, 3]), np.array([0.3, 0.2]))
    n_pop = sum(g == "popularity" for _, g in space.feature_names())
    pop = np.ones((2, n_pop), np.float32)
    a, b = space.transform(req, pop), back.transform(req, pop)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] and np.array_equal(a[2], b[2])
