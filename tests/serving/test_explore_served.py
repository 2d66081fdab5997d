"""Exploration through the real serving path: greedy when off, bounded when on, logged."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from fastapi.testclient import TestClient

from shortlist.bundle.bundle import load_bundle
from shortlist.bundle.slots import Slots
from shortlist.ranking.cold_share import cold_slots
from shortlist.serving.app import create_app
from shortlist.serving.explore import POLICY
from shortlist.serving.recommend import prepare, recommend
from shortlist.serving.schemas import RecommendRequest

USERS = [f"u{u}" for u in range(0, 150, 7)]


def _live(world, live_root):
    root, _a, _b = live_root
    return prepare(load_bundle(Slots(root).slot_location("live")), root)


def _lists(sb, params, *, explore, seed=0, k=20, anonymous=False):
    rng = np.random.default_rng(seed)
    out = []
    for u in USERS:
        req = (
            RecommendRequest(recent_items=[], k=k)
            if anonymous
            else RecommendRequest(user_id=u, k=k)
        )
        out.append(recommend(sb, req, params, rng, now=1.8e9, explore=explore))
    return out


def test_exploration_off_serves_exactly_the_greedy_lists(world, live_root):
    sb = _live(world, live_root)
    off = world.params.with_overrides({"serving.exploration_slots": 0})
    for anonymous in (False, True):
        greedy = _lists(sb, world.params, explore=False, anonymous=anonymous)
        slots_off = _lists(sb, off, explore=True, anonymous=anonymous)
        for g, s in zip(greedy, slots_off, strict=True):
            assert g.item_ids == s.item_ids and g.policy == s.policy == "deterministic"
            assert (s.propensities == 1.0).all() and s.exploration_cost == 0.0


def test_exploration_keeps_the_top_and_the_cold_cap(world, live_root):
    sb = _live(world, live_root)
    params = world.params.with_overrides(
        {"serving.exploration_slots": 3, "serving.max_cold_share": 0.1}
    )
    k, cap = 20, cold_slots(20, 0.1)
    for seed in range(3):
        greedy = _lists(sb, params, explore=False, seed=seed)
        explored = _lists(sb, params, explore=True, seed=seed)
        for g, x in zip(greedy, explored, strict=True):
            assert x.policy == POLICY and len(x.item_ids) == k
            assert x.item_ids[:3] == g.item_ids[:3]  # the protected top never moves
            kept = [i for i, e in zip(x.item_ids, x.explored, strict=True) if not e]
            assert kept == g.item_ids[: k - 3]  # the greedy head, in order
            assert x.explored.sum() == 3 and (x.propensities[x.explored] < 1).all()
            assert (x.propensities[~x.explored] == 1.0).all()
            assert len(set(x.item_ids)) == k
            assert x.exploration_cost >= 0
            rows = np.asarray([sb.row_of[i] for i in x.item_ids])
            assert sb.cold[rows].sum() <= cap


def test_app_explores_by_default_and_logs_it(world, live_root, tmp_path):
    root, _a, _b = live_root
    imp = tmp_path / "imp"
    params = world.params.with_overrides({"serving.impressions_dir": str(imp)})
    assert params.serving.exploration_slots > 0  # on by default
    with TestClient(create_app(params, root=root)) as client:
        deadline = time.time() + 30
        while client.get("/ready").status_code != 200 and time.time() < deadline:
            time.sleep(0.05)
        bodies = [client.post("/recommend", json={"user_id": u, "k": 20}).json() for u in USERS]
        bodies.append(client.post("/recommend", json={"recent_items": [], "k": 20}).json())
        text = client.get("/metrics").text
    for body in bodies:
        assert body["policy"] == POLICY
        flags = [it["explored"] for it in body["items"]]
        assert sum(flags) == params.serving.exploration_slots
        assert body["exploration_cost"] >= 0
    assert f"shortlist_exploration_cost_count {float(len(bodies))}" in text
    assert f"shortlist_exploration_lists_total {float(len(bodies))}" in text
    assert f"shortlist_explored_items_total {float(2 * len(bodies))}" in text
    log = pd.concat(
        [pd.read_parquet(f) for f in sorted(Path(imp).glob("impressions-*.parquet"))],
        ignore_index=True,
    )
    assert len(log) == 20 * len(bodies)
    by_request = {b["request_id"]: b for b in bodies}
    for rid, rows in log.groupby("request_id"):
        body = by_request[rid]
        rows = rows.sort_values("position")
        assert rows["explored"].tolist() == [it["explored"] for it in body["items"]]
        np.testing.assert_allclose(rows["propensity"], [it["propensity"] for it in body["items"]])
        assert (rows["exploration_cost"] == body["exploration_cost"]).all()
