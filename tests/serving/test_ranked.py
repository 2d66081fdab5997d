"""A bundle with a real trained ranker: /recommend orders the candidate union by it."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pandas as pd
from fastapi.testclient import TestClient

from shortlist.bundle.bundle import load_bundle
from shortlist.bundle.slots import Slots
from shortlist.index.ann import search
from shortlist.models.vectors import widen_queries
from tests.serving.conftest import build_into_idle


def test_recommend_ranks_the_candidates_with_the_bundled_ranker(world, tmp_path):
    from shortlist.data.io import read_dataset
    from shortlist.models.two_tower import TwoTowerRetriever
    from shortlist.ranking.train import train_ranker
    from shortlist.serving.app import create_app

    model_dir = tmp_path / "model"
    shutil.copytree(world.model_a, model_dir)
    ds = read_dataset(world.data_dir)
    inter = ds.interactions
    cut = inter["timestamp"].quantile(0.9)
    train, validation = inter[inter["timestamp"] <= cut], inter[inter["timestamp"] > cut]
    params = world.params.with_overrides(
        {
            "ranker.epochs": 1,
            "ranker.candidates": 30,
            "ranker.item_to_item_candidates": 20,
            "ranker.popular_candidates": 5,
            "serving.exploration_slots": 0,  # the greedy ranked list is checked
        }
    )
    retriever = TwoTowerRetriever.load(str(model_dir))
    ranker, _ = train_ranker(
        params, retriever, train, validation, ds.items, ds.users, progress=False, mlflow_run=False
    )
    ranker.save(str(model_dir))
    root = str(tmp_path / "bundles")
    build_into_idle(params, root, str(model_dir), world.data_dir)
    Slots(root).promote()
    bundle = load_bundle(Slots(root).slot_location("live"))
    assert bundle.ranker is not None

    with TestClient(create_app(params, root=root)) as client:
        deadline = time.monotonic() + 30
        while client.get("/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        user = sorted(bundle.histories)[0]
        body = client.post("/recommend", json={"user_id": user, "k": 8}).json()
    assert body["bundle_id"] == bundle.bundle_id and len(body["items"]) == 8

    # Recompute the funnel with the bundle's own parts: tower -> index top-30 and the
    # extra sources -> ranker.
    history = bundle.histories[user]
    users = bundle.users[bundle.users["user_id"].astype(str) == user]
    q = bundle.retriever.embed_users([user], [history], users=users, timestamps=[body["served_at"]])
    q = widen_queries(q, bundle.item_vectors.shape[1])
    scores, rows = search(bundle.index, q, 30 + len(set(history)))
    seen = {i for i, item in enumerate(bundle.item_ids) if item in set(history)}
    keep = [(r, s) for r, s in zip(rows[0], scores[0], strict=True) if r >= 0 and r not in seen]
    keep = keep[:30]  # the top ranker.candidates that remain, however many the search widened
    assert len(keep) == 30
    cand_rows = np.array([r for r, _ in keep])
    cand_scores = np.array([s for _, s in keep], dtype=np.float32)
    # Then what the ranker's extra sources add (ItemKNN of the history, the trend), scored
    # by the index vectors.
    sources, space = bundle.ranker.candidate_sources(), bundle.ranker.space
    assert sources.active
    pos = space.item_positions(list(bundle.item_ids))
    hist_pos = space.item_positions(history[-200:])
    more = sources.extra(hist_pos[hist_pos >= 0], pos[cand_rows], pos[sorted(seen)])
    row_of = {item: r for r, item in enumerate(bundle.item_ids)}
    more_rows = np.array([row_of[space.item_ids[p]] for p in more], dtype=np.int64)
    assert len(more_rows) > 0
    cand_rows = np.r_[cand_rows, more_rows]
    cand_scores = np.r_[cand_scores, bundle.item_vectors[more_rows] @ q[0]].astype(np.float32)
    ranked = bundle.ranker.score(
        user,
        history,
        bundle.item_ids[cand_rows],
        {"timestamp": int(body["served_at"]), "retrieval_scores": cand_scores},
    )
    order = np.argsort(-ranked, kind="stable")[:8]
    assert [it["item_id"] for it in body["items"]] == bundle.item_ids[cand_rows[order]].tolist()
    np.testing.assert_allclose([it["score"] for it in body["items"]], ranked[order], atol=1e-5)
    retrieval = pd.Series(cand_scores, index=bundle.item_ids[cand_rows])
    np.testing.assert_allclose(
        [it["retrieval_score"] for it in body["items"]],
        retrieval[[it["item_id"] for it in body["items"]]].to_numpy(),
        atol=1e-5,
    )
