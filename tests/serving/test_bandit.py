"""The bandit a new system serves before any bundle: propensities, learning, the app."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from fastapi.testclient import TestClient

from shortlist.data.io import write_dataset
from shortlist.serving.app import create_app
from shortlist.serving.bandit import BUNDLE_ID, POLICY, ThompsonBandit, is_positive


def test_monte_carlo_propensities_match_the_frequencies():
    items = [f"i{j}" for j in range(8)]
    b = ThompsonBandit(items, np.linspace(0.05, 0.4, 8), prior_strength=20, pool=8, draws=2000)
    a0, b0 = b.alpha.copy(), b.beta.copy()
    rng = np.random.default_rng(0)
    counts: dict[tuple[int, str], int] = {}
    logged: dict[tuple[int, str], list[float]] = {}
    n = 3000
    for r in range(n):
        got = b.recommend(f"r{r}", 3, rng)
        b.alpha, b.beta = a0.copy(), b0.copy()  # the same posterior for every draw
        for pos, (item, p) in enumerate(zip(got.item_ids, got.propensities, strict=True)):
            counts[(pos, item)] = counts.get((pos, item), 0) + 1
            logged.setdefault((pos, item), []).append(p)
    for key, c in counts.items():
        est = float(np.mean(logged[key]))
        assert abs(c / n - est) < 5 * np.sqrt(est * (1 - est) / n) + 0.01, (key, c / n, est)


def test_the_bandit_learns_which_items_get_clicked():
    rng = np.random.default_rng(1)
    n_items, k = 200, 5
    true = rng.beta(1, 12, n_items)  # click probability of each item, unknown to it
    popularity = np.clip(true + rng.normal(0, 0.05, n_items), 0.001, None)  # a noisy prior
    items = [f"i{j}" for j in range(n_items)]
    bandit = ThompsonBandit(items, None, pool=200, draws=50)
    clicks = {"bandit": 0.0, "random": 0.0, "popularity": 0.0}
    pop_list = np.argsort(-popularity)[:k]
    for u in range(1000):  # the first 1,000 users
        got = bandit.recommend(f"r{u}", k, rng)
        for row, item in zip(got.rows, got.item_ids, strict=True):
            clicked = rng.random() < true[row]
            clicks["bandit"] += clicked
            bandit.update(f"r{u}", item, clicked)
        clicks["random"] += true[rng.choice(n_items, k, replace=False)].sum()
        clicks["popularity"] += true[pop_list].sum()
    rate = {name: c / (1000 * k) for name, c in clicks.items()}
    assert rate["bandit"] > 1.5 * rate["random"], rate
    assert bandit.successes == clicks["bandit"]
    # The posterior ranks the best items high after 1,000 users.
    best = set(np.argsort(-true)[:20].tolist())
    assert len(best & set(np.argsort(-bandit.posterior_mean())[:20].tolist())) >= 8


def test_events_credit_each_shown_item_once():
    b = ThompsonBandit(["a", "b", "c"], pool=3, draws=10)
    got = b.recommend("r1", 2, np.random.default_rng(0))
    item = got.item_ids[0]
    a_before = b.alpha.copy()
    assert b.update("r1", item, True) and not b.update("r1", item, True)
    assert not b.update("r1", "c" if "c" not in got.item_ids else "zz", True)
    assert not b.update("r2", item, True)  # not a list it served
    assert b.alpha.sum() == a_before.sum() + 1
    assert is_positive("click", None) and is_positive("watch", 12.0)
    assert not is_positive("watch", 0.0) and not is_positive("skip", None)
    assert is_positive("like", 1.0) and not is_positive("like", 0.0)


def test_app_serves_the_bandit_while_no_bundle_is_live(world, tmp_path):
    data = tmp_path / "data"
    items = pd.DataFrame({"item_id": [f"i{j}" for j in range(30)], "title": "t"})
    users = pd.DataFrame({"user_id": ["u1"]})
    inter = pd.DataFrame(
        {"user_id": "u1", "item_id": ["i1", "i2"], "timestamp": [1, 2], "weight": 1.0}
    )
    write_dataset(str(data), inter, items, users, source="test")
    params = world.params.with_overrides(
        {"data.dir": str(data), "serving.impressions_dir": str(tmp_path / "imp")}
    )
    with TestClient(create_app(params, root=str(tmp_path / "no-bundles"))) as client:
        deadline = time.time() + 10
        while client.get("/ready").status_code != 200 and time.time() < deadline:
            time.sleep(0.05)
        assert client.get("/ready").json()["serving"] == "bandit"
        body = client.post("/recommend", json={"user_id": "u9", "k": 5}).json()
        assert body["bundle_id"] == BUNDLE_ID and body["strategy"] == "bandit"
        assert body["policy"] == POLICY and len(body["items"]) == 5
        assert all(0 < it["propensity"] <= 1 for it in body["items"])
        first = body["items"][0]["item_id"]
        ev = {"request_id": body["request_id"], "item_id": first, "kind": "click"}
        assert client.post("/events", json=ev).status_code == 200
        anon = client.post("/recommend", json={"recent_items": ["i1"], "k": 29}).json()
        assert "i1" not in [it["item_id"] for it in anon["items"]]
        text = client.get("/metrics").text
        bandit = client.app.state.bandit
    assert "shortlist_bandit_lists_total 2.0" in text
    assert "shortlist_bandit_successes_total 1.0" in text
    assert bandit.successes == 1 and bandit.lists_served == 2
    log = pd.concat([pd.read_parquet(f) for f in (tmp_path / "imp").glob("*.parquet")])
    assert set(log["bundle_id"]) == {BUNDLE_ID} and set(log["policy"]) == {POLICY}
    assert len(log) == 5 + 29


def test_a_restarted_server_keeps_what_the_bandit_learned(world, tmp_path):
    data = tmp_path / "data"
    items = pd.DataFrame({"item_id": [f"i{j}" for j in range(10)], "title": "t"})
    inter = pd.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "timestamp": [1], "weight": 1.0})
    write_dataset(str(data), inter, items, pd.DataFrame({"user_id": ["u1"]}), source="test")
    params = world.params.with_overrides(
        {"data.dir": str(data), "serving.impressions_dir": str(tmp_path / "imp")}
    )
    root = str(tmp_path / "no-bundles")
    with TestClient(create_app(params, root=root)) as client:
        body = client.post("/recommend", json={"user_id": "u1", "k": 3}).json()
        clicked = body["items"][1]["item_id"]
        ev = {"request_id": body["request_id"], "item_id": clicked, "kind": "click"}
        assert client.post("/events", json=ev).status_code == 200
        before = client.app.state.bandit
        alpha, beta = before.alpha.copy(), before.beta.copy()
    with TestClient(create_app(params, root=root)) as client:
        after = client.app.state.bandit
        # The event for the list served before the restart is still credited once.
        client.post("/recommend", json={"user_id": "u1", "k": 1})  # triggers the replay
        np.testing.assert_allclose(after.alpha, alpha)
        shown_now = after.row_of[after.item_ids[np.argmax(after.beta - beta)]]
        assert (after.beta - beta).sum() == 1.0 and after.beta[shown_now] == beta[shown_now] + 1
        assert client.post("/events", json=ev).status_code == 200  # a retry: not twice
        np.testing.assert_allclose(after.alpha, alpha)


def test_the_genre_filter_applies_to_the_bandit():
    genres = [["drama"], ["comedy"], ["drama", "comedy"], None, ["horror"]]
    b = ThompsonBandit(["a", "b", "c", "d", "e"], pool=5, draws=20, genres=genres)
    rng = np.random.default_rng(0)
    for r in range(20):
        got = b.recommend(f"r{r}", 5, rng, genres={"drama"})
        assert sorted(got.item_ids) == ["a", "c"]
    assert b.recommend("x", 3, rng, genres={"western"}).item_ids == []
    plain = ThompsonBandit(["a", "b"], pool=2, draws=5)
    assert plain.recommend("y", 2, rng, genres={"drama"}).item_ids == []
