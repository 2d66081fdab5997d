"""The serving API over real bundles: answers, filters, the prior, 422s, metrics, impressions."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from shortlist.bundle.bundle import load_bundle
from shortlist.bundle.slots import Slots
from shortlist.models.vectors import widen_queries
from shortlist.serving.app import create_app


def _ready(client: TestClient, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = client.get("/ready")
        if resp.status_code == 200:
            return resp.json()
        time.sleep(0.05)
    raise AssertionError(f"not ready: {resp.text}")


def _expected_scores(bundle, user_id, history, served_at, item_ids):
    """The bundle's own exact scoring: its user tower . its item vectors."""
    users = bundle.users[bundle.users["user_id"].astype(str) == (user_id or "")]
    q = bundle.retriever.embed_users(
        [user_id or ""], [history], users=users if len(users) else None, timestamps=[served_at]
    )
    # The index holds embedding + popularity column: the query's side of that column is 1.
    assert bundle.item_vectors.shape[1] == bundle.retriever.index_dim
    q = widen_queries(q, bundle.item_vectors.shape[1])
    row_of = {i: r for r, i in enumerate(bundle.item_ids)}
    rows = [row_of[i] for i in item_ids]
    return np.asarray(bundle.item_vectors[rows]) @ q[0], row_of, q[0]


@pytest.fixture
def served(world, live_root, tmp_path):
    root, a, b = live_root
    Slots(root).write_canary(
        "live", {"bundle_id": a, "passed": True, "recall@10": 0.97, "recall@100": 0.99}
    )
    params = world.params.with_overrides(
        {
            "serving.impressions_dir": str(tmp_path / "impressions"),
            "serving.impressions_rotate_rows": 25,
            "serving.exploration_slots": 0,  # these tests check the greedy lists
        }
    )
    app = create_app(params, root=root)
    with TestClient(app) as client:
        _ready(client)
        yield client, params, root, a, b, load_bundle(Slots(root).slot_location("live"))


def test_known_user_gets_exact_personal_scores_from_the_named_bundle(served):
    client, params, _root, a, _b, bundle = served
    user = next(iter(bundle.histories))
    resp = client.post("/recommend", json={"user_id": user, "k": 10})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["bundle_id"] == a and body["strategy"] == "personalized"
    ids = [it["item_id"] for it in body["items"]]
    assert len(ids) == 10 and len(set(ids)) == 10
    history = bundle.histories[user]
    assert not set(ids) & set(history)  # exclude_seen defaults to true
    expected, row_of, q = _expected_scores(bundle, user, history, body["served_at"], ids)
    got = np.array([it["retrieval_score"] for it in body["items"]])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert [it["position"] for it in body["items"]] == list(range(10))
    assert all(it["propensity"] == 1.0 for it in body["items"])
    # Top-10 over the unseen catalog by exact inner product (the tiny index is flat).
    all_scores = np.asarray(bundle.item_vectors) @ q
    all_scores[[row_of[i] for i in history if i in row_of]] = -np.inf
    best = np.sort(all_scores)[::-1][:10]
    np.testing.assert_allclose(np.sort(got)[::-1], best, atol=1e-4)


def test_filters_and_exclusions(served):
    client, _params, _root, _a, _b, bundle = served
    user = next(iter(bundle.histories))
    history = bundle.histories[user]
    plain = client.post("/recommend", json={"user_id": user, "k": 5}).json()
    banned = [it["item_id"] for it in plain["items"][:2]]
    body = client.post("/recommend", json={"user_id": user, "k": 5, "exclude_items": banned}).json()
    assert not {it["item_id"] for it in body["items"]} & set(banned)
    seen = client.post("/recommend", json={"user_id": user, "k": 50, "exclude_seen": False}).json()
    assert {it["item_id"] for it in seen["items"]} & set(history)  # seen items may come back
    genres = bundle.items.set_index("item_id")["genres"]
    body = client.post("/recommend", json={"user_id": user, "k": 15, "genres": ["horror"]}).json()
    assert len(body["items"]) == 15
    assert all("horror" in list(genres[it["item_id"]]) for it in body["items"])


def test_new_user_gets_the_popularity_prior(served):
    client, _params, _root, a, _b, bundle = served
    body = client.post("/recommend", json={"user_id": "someone-new", "k": 7}).json()
    assert body["strategy"] == "popularity" and body["bundle_id"] == a
    ids = [it["item_id"] for it in body["items"]]
    top = bundle.item_ids[np.argsort(-bundle.popularity, kind="stable")[:7]].tolist()
    assert ids == top
    anon = client.post("/recommend", json={"recent_items": ["not-an-item"], "k": 7}).json()
    assert [it["item_id"] for it in anon["items"]] == top  # unknown ids ignored -> prior


def test_anonymous_recent_items_are_personalised_and_unknown_ids_ignored(served):
    client, _params, _root, _a, _b, bundle = served
    recent = [bundle.item_ids[3], "unknown-1", bundle.item_ids[7]]
    body = client.post("/recommend", json={"recent_items": recent, "k": 8}).json()
    assert body["strategy"] == "personalized" and body["user_id"] is None
    known = [recent[0], recent[2]]
    ids = [it["item_id"] for it in body["items"]]
    assert not set(ids) & set(known)
    expected, _, _ = _expected_scores(bundle, None, known, body["served_at"], ids)
    np.testing.assert_allclose([it["score"] for it in body["items"]], expected, atol=1e-4)


def test_similar_items(served):
    client, _params, _root, a, _b, bundle = served
    item = str(bundle.item_ids[5])
    body = client.get(f"/similar-items/{item}", params={"k": 6}).json()
    assert body["bundle_id"] == a and len(body["items"]) == 6
    ids = [it["item_id"] for it in body["items"]]
    assert item not in ids
    v = np.asarray(bundle.item_vectors)[:, : bundle.retriever.embedding_dim]
    scores = v @ v[5]  # item-embedding similarity: the popularity column plays no part
    scores[5] = -np.inf
    np.testing.assert_allclose(
        [it["score"] for it in body["items"]], np.sort(scores)[::-1][:6], atol=1e-4
    )
    assert client.get("/similar-items/no-such-item").status_code == 404


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"user_id": "u1", "k": 0}, "k must be between 1 and"),
        ({"user_id": "u1", "k": 1001}, "k must be between 1 and 1000"),
        ({"user_id": "bad id with spaces", "k": 5}, "user_id"),
        ({"user_id": "", "k": 5}, "user_id"),
        ({"recent_items": ["ok", "x" * 500]}, "recent_items"),
        ({"k": 5}, "give a user_id"),
        ({"user_id": "u1", "colour": "red"}, "colour"),
        ({"user_id": "u1", "k": "many"}, "k"),
    ],
)
def test_invalid_input_is_422_with_a_clear_message(served, body, needle):
    client = served[0]
    resp = client.post("/recommend", json=body)
    assert resp.status_code == 422, resp.text
    assert needle in resp.text


def test_oversized_body_and_bad_path_ids_are_422(served):
    client, params = served[0], served[1]
    big = {"user_id": "u1", "recent_items": ["i1"] * (params.serving.max_body_bytes // 4)}
    resp = client.post("/recommend", json=big)
    assert resp.status_code == 422 and "max_body_bytes" in resp.text
    assert client.get("/similar-items/bad%20id").status_code == 422
    assert client.get("/similar-items/i1", params={"k": 0}).status_code == 422


def test_health_version_and_metrics(served):
    client, _params, _root, a, _b, _bundle = served
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/version").json()["bundle_id"] == a
    client.post("/recommend", json={"user_id": "u1", "k": 3})
    client.post("/recommend", json={"user_id": "u1", "k": 0})
    text = client.get("/metrics").text
    assert 'shortlist_request_latency_seconds_bucket{endpoint="/recommend"' in text
    assert 'shortlist_requests_total{endpoint="/recommend",status="200"}' in text
    assert 'shortlist_requests_total{endpoint="/recommend",status="422"}' in text
    assert f'shortlist_live_bundle_info{{bundle_id="{a}"}} 1.0' in text
    assert 'shortlist_canary_recall{check="recall@10"} 0.97' in text
    assert "shortlist_canary_passed 1.0" in text


def test_impressions_log_every_served_list(world, live_root, tmp_path):
    root, a, _b = live_root
    params = world.params.with_overrides(
        {
            "serving.impressions_dir": str(tmp_path / "imp"),
            "serving.impressions_rotate_rows": 25,
            "serving.exploration_slots": 0,  # greedy: every propensity 1
        }
    )
    app = create_app(params, root=root)
    with TestClient(app) as client:
        _ready(client)
        for u in range(9):
            assert client.post("/recommend", json={"user_id": f"u{u}", "k": 10}).status_code == 200
        client.get("/similar-items/i3", params={"k": 4})
    files = sorted(Path(tmp_path / "imp").glob("impressions-*.parquet"))
    assert len(files) >= 3  # 94 rows rotated every 25 + the remainder on shutdown
    log = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    assert len(log) == 94
    assert set(log["bundle_id"]) == {a}
    assert (
        log.groupby("request_id")["position"]
        .apply(lambda p: sorted(p) == list(range(len(p))))
        .all()
    )
    assert (log["propensity"] == 1.0).all() and set(log["policy"]) == {"deterministic"}
    assert set(log["endpoint"]) == {"/recommend", "/similar-items"}
    rec = log[log["endpoint"] == "/recommend"]
    assert rec["user_id"].notna().all() and rec["score"].notna().all()


def test_exploration_logs_plackett_luce_propensities(world, live_root, tmp_path):
    from shortlist.serving.recommend import choose

    rng = np.random.default_rng(0)
    scores = np.array([2.0, 1.0, 0.5, 0.0])
    pick, prop, policy = choose(scores, 2, 1.0, rng)
    assert policy == "plackett_luce"
    w = np.exp(scores - scores.max())
    first = w[pick[0]] / w.sum()
    second = w[pick[1]] / (w.sum() - w[pick[0]])
    np.testing.assert_allclose(prop, [first, second])
    # Empirical check: the first position's frequencies follow softmax(scores / T).
    firsts = np.bincount([choose(scores, 1, 1.0, rng)[0][0] for _ in range(4000)], minlength=4)
    np.testing.assert_allclose(firsts / 4000, w / w.sum(), atol=0.03)

    root, _a, _b = live_root
    params = world.params.with_overrides(
        {
            "serving.impressions_dir": str(tmp_path / "imp"),
            "serving.exploration_temperature": 0.1,
        }
    )
    with TestClient(create_app(params, root=root)) as client:
        _ready(client)
        body = client.post("/recommend", json={"user_id": "u2", "k": 5}).json()
    assert body["policy"] == "plackett_luce"
    assert all(0 < it["propensity"] <= 1 for it in body["items"])


def test_not_ready_without_a_live_bundle(world, tmp_path):
    params = world.params.with_overrides({"serving.bandit.enabled": False})
    app = create_app(params, root=str(tmp_path / "empty-root"))
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code == 503
        assert client.post("/recommend", json={"user_id": "u1"}).status_code == 503


@pytest.mark.parametrize(
    "raw",
    [
        b'{"user_id": "u1", "k": NaN}',
        b'{"user_id": "u1", "colour": Infinity}',
        b'{"recent_items": ["i1"], "exclude_items": [-Infinity]}',
        b'{"user_id": "u1", "genres": [{"x": NaN}]}',
    ],
)
def test_non_finite_json_numbers_are_422_not_500(served, raw):
    client = served[0]
    resp = client.post("/recommend", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert "not JSON numbers" in resp.json()["detail"][0]["msg"]


def test_ids_that_spell_nan_are_still_served(served):
    client = served[0]
    raw = b'{"user_id": "NaN-Infinity", "k": 3}'
    resp = client.post("/recommend", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 200, resp.text


def test_a_validation_error_echoing_a_non_finite_value_still_encodes():
    import asyncio

    from fastapi.exceptions import RequestValidationError

    from shortlist.serving.guards import validation_error

    exc = RequestValidationError([{"loc": ("body", "k"), "msg": "bad", "input": float("nan")}])
    resp = asyncio.run(validation_error(None, exc))
    assert resp.status_code == 422 and b'"input":"nan"' in resp.body


def test_api_docs_are_served_from_the_package_without_a_cdn(served):
    import re

    client = served[0]
    for page in ("/docs", "/redoc"):
        resp = client.get(page)
        assert resp.status_code == 200, page
        html = resp.text
        refs = re.findall(r'(?:src|href|spec-url)\s*=\s*["\']([^"\']+)["\']', html)
        refs += re.findall(r'url:\s*["\']([^"\']+)["\']', html)
        assert refs, f"{page} references no assets"
        assert not re.search(r"https?://|//cdn|jsdelivr|unpkg|fonts\.googleapis", html), page
        for ref in refs:
            assert ref.startswith("/"), f"{page} references {ref}"
            asset = client.get(ref)
            assert asset.status_code == 200 and len(asset.content) > 100, ref
    assert "/recommend" in client.get("/openapi.json").json()["paths"]


def test_write_ahead_dir_defaults_beside_local_impressions_and_under_work_for_s3(world):
    from shortlist.serving.app import wal_dir

    local = world.params.with_overrides({"serving.impressions_dir": "/data/imp"})
    assert wal_dir(local) == "/data/imp/.wal"  # pyarrow dataset readers skip dot-dirs
    remote = world.params.with_overrides(
        {"serving.impressions_dir": "s3://bucket/imp", "project.work_dir": "/srv/shortlist"}
    )
    assert wal_dir(remote) == "/srv/shortlist/impressions-wal"
    named = remote.with_overrides({"serving.impressions_wal_dir": "/fast/wal"})
    assert wal_dir(named) == "/fast/wal"


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b'{"user_id": "u1", "k": 1e999}', "finite number"),  # overflows to inf when parsed
        (b'{"user_id": "u1", "extra": -1e999}', "extra"),
        (b'{"user_id": "\\ud800"}', "user_id"),  # a lone surrogate: UTF-8 cannot encode it
        (b'{"user_id": "u1", "genres": ["\\udfff", 7]}', "genres"),
    ],
)
def test_values_json_cannot_echo_back_are_still_a_422(served, raw, needle):
    client = served[0]
    resp = client.post("/recommend", content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    assert needle in resp.text
