"""With a live bundle, the bandit serves the catalog section with no interactions through
the deepest exploration slot, bounded by the cold share (`serving.bandit.cold_section`),
and a restarted server replays what that section learned before it is ready."""

from __future__ import annotations

import threading
import time

import numpy as np
from fastapi.testclient import TestClient

import shortlist.serving.app as app_mod
from shortlist.ranking.cold_share import cold_slots
from shortlist.serving.app import create_app

NEVER = {f"i{j}" for j in range(280, 300)}  # tiny_tables: nobody interacted with these


def _serve(world, live_root, tmp_path, **overrides):
    root, _a, _b = live_root
    params = world.params.with_overrides(
        {
            "data.dir": world.data_dir,
            "serving.impressions_dir": str(tmp_path / "imp"),
            "serving.exploration_slots": 2,
            **overrides,
        }
    )
    client = TestClient(create_app(params, root=root))
    client.__enter__()
    deadline = time.time() + 30
    while client.get("/ready").status_code != 200 and time.time() < deadline:
        time.sleep(0.05)
    assert client.get("/ready").json()["bundle_id"]
    if params.serving.bandit.cold_section:  # ready only once the replay is done
        assert client.app.state.bandit_replayed.is_set()
    return client


def _lists(client, n, k=10):
    return [client.post("/recommend", json={"user_id": f"u{u}", "k": k}).json() for u in range(n)]


def _drawn(bodies, k=10, share=0.1):
    """The lists whose deepest exploration slot holds the bandit's cold-section draw, with
    that item."""
    out = []
    for body in bodies:
        items = body["items"]
        deepest = max(it["position"] for it in items if it["explored"])
        others = sum(it["item_id"] in NEVER for it in items if it["position"] != deepest)
        if others < cold_slots(k, share) and items[deepest]["item_id"] in NEVER:
            out.append((body, items[deepest]))
    return out


def test_the_deepest_exploration_slot_draws_from_the_cold_section(world, live_root, tmp_path):
    client = _serve(
        world,
        live_root,
        tmp_path,
        **{"serving.bandit.cold_section": True, "serving.max_cold_share": 0.1},
    )
    try:
        bodies = _lists(client, 40)
        bandit = client.app.state.bandit
        drawn = []
        for body in bodies:
            items = body["items"]
            deepest = max(it["position"] for it in items if it["explored"])
            shown = items[deepest]
            others = sum(it["item_id"] in NEVER for it in items if it["position"] != deepest)
            assert sum(it["item_id"] in NEVER for it in items) <= cold_slots(10, 0.1)
            assert len({it["item_id"] for it in items}) == len(items)
            if others >= cold_slots(10, 0.1):
                continue  # the slot policy's own draw already took the cold share: no room
            assert shown["item_id"] in NEVER, items  # the section the bandit serves
            assert 0 < shown["propensity"] <= 1
            drawn.append(body)
        # Exploration reaches a cold item by itself only now and then.
        assert len(drawn) >= 30, len(drawn)
        # A click on that slot's item is a success of the bandit's posterior, once.
        body = drawn[0]
        item = body["items"][max(it["position"] for it in body["items"] if it["explored"])]
        row = bandit.row_of[item["item_id"]]
        before = bandit.alpha[row]
        ev = {"request_id": body["request_id"], "item_id": item["item_id"], "kind": "click"}
        assert client.post("/events", json=ev).status_code == 200
        assert client.post("/events", json=ev).status_code in (200, 409)
        assert bandit.alpha[row] == before + 1
        assert bandit.lists_served == len(drawn)  # it draws only where the share has room
    finally:
        client.__exit__(None, None, None)


def test_no_room_in_the_cold_share_or_off_leaves_the_list_alone(world, live_root, tmp_path):
    client = _serve(
        world,
        live_root,
        tmp_path,
        **{"serving.bandit.cold_section": True, "serving.max_cold_share": 0.0},
    )
    try:
        bodies = _lists(client, 20)
        assert not any(it["item_id"] in NEVER for b in bodies for it in b["items"])
        assert client.app.state.bandit.lists_served == 0
    finally:
        client.__exit__(None, None, None)
    client = _serve(world, live_root, tmp_path / "off", **{"serving.max_cold_share": 0.1})
    try:
        deepest = [
            b["items"][max(it["position"] for it in b["items"] if it["explored"])]["item_id"]
            for b in _lists(client, 40)
        ]
        assert np.mean([i in NEVER for i in deepest]) < 0.5  # the slot policy's own draws
        assert client.app.state.bandit.lists_served == 0
    finally:
        client.__exit__(None, None, None)


def test_a_restart_replays_the_cold_section_draws_and_their_clicks(world, live_root, tmp_path):
    """What the cold section learned survives a restart: every draw is a trial again and
    the click on one a success, credited once (a retried event after the restart is not
    counted twice)."""
    on = {"serving.bandit.cold_section": True, "serving.max_cold_share": 0.1}
    client = _serve(world, live_root, tmp_path, **on)
    try:
        drawn = _drawn(_lists(client, 30))
        assert len(drawn) >= 20, len(drawn)
        body, item = drawn[0]
        ev = {"request_id": body["request_id"], "item_id": item["item_id"], "kind": "click"}
        assert client.post("/events", json=ev).status_code == 200
        bandit = client.app.state.bandit
        alpha, beta = bandit.alpha.copy(), bandit.beta.copy()
        assert alpha.sum() > 0 or beta.sum() > 0
    finally:
        client.__exit__(None, None, None)
    row = bandit.row_of[item["item_id"]]

    client = _serve(world, live_root, tmp_path, **on)
    try:
        after = client.app.state.bandit
        assert after is not bandit
        np.testing.assert_array_equal(after.beta, beta)  # every draw: a trial
        np.testing.assert_array_equal(after.alpha, alpha)  # the click: a success
        assert after.alpha[row] > np.median(after.alpha)
        assert client.post("/events", json=ev).status_code in (200, 409)
        np.testing.assert_array_equal(after.alpha, alpha)
    finally:
        client.__exit__(None, None, None)


def test_not_ready_and_no_cold_draw_until_the_replay_is_done(
    world, live_root, tmp_path, monkeypatch
):
    release = threading.Event()
    real = app_mod.replay_bandit
    monkeypatch.setattr(app_mod, "replay_bandit", lambda *a: (release.wait(30), real(*a)))
    root, _a, _b = live_root
    params = world.params.with_overrides(
        {
            "data.dir": world.data_dir,
            "serving.impressions_dir": str(tmp_path / "imp"),
            "serving.exploration_slots": 2,
            "serving.bandit.cold_section": True,
            "serving.max_cold_share": 0.1,
        }
    )
    with TestClient(create_app(params, root=root)) as client:
        deadline = time.time() + 30
        while client.app.state.holder.current is None and time.time() < deadline:
            time.sleep(0.05)
        r = client.get("/ready")
        assert r.status_code == 503 and "replaying" in r.json()["detail"], r.text
        _lists(client, 10)  # served meanwhile, from the bundle alone
        assert client.app.state.bandit.lists_served == 0
        release.set()
        assert client.app.state.bandit_replayed.wait(30)
        assert client.get("/ready").status_code == 200
        assert len(_drawn(_lists(client, 20))) > 0
        assert client.app.state.bandit.lists_served > 0
