"""The ranking model, its loss, deterministic training, persistence and train/serve parity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from shortlist.ranking.candidates import Retrieval
from shortlist.ranking.event_log import EventLog
from shortlist.ranking.featurize import RankerRows, featurize
from shortlist.ranking.fit import predict
from shortlist.ranking.model import DCNEnsemble, DCNRanker, weighted_logistic_loss
from shortlist.ranking.ranker import Ranker
from shortlist.ranking.request_metrics import request_metrics
from shortlist.ranking.requests import LabeledRequest, make_requests
from shortlist.ranking.train import train_ranker
from tests.ranking.fakes import DAY, FakeRetriever, tiny_data


def _split(inter: pd.DataFrame):
    df = inter.sort_values(["user_id", "timestamp", "item_id"]).reset_index(drop=True)
    pos = df.groupby("user_id").cumcount()
    n = df.groupby("user_id")["item_id"].transform("size")
    return df[pos < 0.6 * n], df[(pos >= 0.6 * n) & (pos < 0.85 * n)], df[pos >= 0.85 * n]


@pytest.fixture
def small_params(params):
    return params.with_overrides(
        {
            "ranker.candidates": 12,
            "ranker.random_negatives": 3,
            "ranker.epochs": 3,
            "ranker.batch_size": 64,
            "ranker.hidden_dims": [16],
            "ranker.id_dim": 4,
            "ranker.threads": 1,
            "ranker.holdout_fraction": 0.3,
            "ranker.learning_rate": 0.01,
            "ranker.feature_groups": ["crosses", "cooccurrence", "popularity", "ids"],
            "ranker.cooccurrence_neighbours": 5,
            "ranker.ensemble": 2,
            "ranker.blend_weights": [],  # the network alone; the blend: test_item_item.py
        }
    )


def test_weighted_loss_equals_repeating_positives():
    logits = torch.tensor([0.3, -1.2, 2.0])
    y = torch.tensor([1.0, 0.0, 0.0])
    weighted = weighted_logistic_loss(logits, y, torch.tensor([3.0, 1.0, 1.0]))
    rep = weighted_logistic_loss(
        torch.tensor([0.3, 0.3, 0.3, -1.2, 2.0]),
        torch.tensor([1.0, 1, 1, 0, 0]),
        torch.ones(5),
    )
    assert float(weighted) == pytest.approx(float(rep))


@pytest.mark.parametrize("use_ids", [True, False])
def test_dcn_shapes_and_cross_term(use_ids):
    torch.manual_seed(0)
    m = DCNRanker(6, 3, 5, id_dim=4, cross_layers=2, hidden_dims=[8], use_ids=use_ids)
    out = m(torch.randn(7, 6), torch.zeros(7, dtype=torch.long), torch.arange(7) % 6)
    assert out.shape == (7,)
    assert len(m.cross) == 2 and m.cross[0].linear.in_features == 6 + (8 if use_ids else 0)
    again = DCNRanker.from_config(m.config)
    assert again.config == m.config


def test_training_is_deterministic_saved_and_served_consistently(small_params, tmp_path):
    inter, items, users = tiny_data()
    train, val, _ = _split(inter)
    retriever = FakeRetriever(items["item_id"])
    r1, s1 = train_ranker(
        small_params, retriever, train, val, items, users, progress=False, mlflow_run=False
    )
    r2, s2 = train_ranker(
        small_params, retriever, train, val, items, users, progress=False, mlflow_run=False
    )
    assert s1["fit_requests"] > 10 and s1["stop_requests"] > 3
    # Fit, stop and decision users are disjoint and cover every validation user.
    first = s1["ensemble"][0]
    assert first["decide_requests"] > 3
    n_users = val["user_id"].nunique()
    assert first["fit_requests"] + first["stop_requests"] + first["decide_requests"] == n_users
    assert s1["decision"]["requests"] == sum(m["decide_requests"] for m in s1["ensemble"])
    assert s1["shipped"] is s1["decision"]["shipped"]
    assert s1["fit_positives"] > 0 and s1["fit_rows"] > s1["fit_requests"] * 12
    assert [h["loss"] for h in s1["history"]] == [h["loss"] for h in s2["history"]]
    for (k, a), (_, b) in zip(
        r1.model.state_dict().items(), r2.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k
    assert s1["history"][-1]["loss"] < s1["history"][0]["loss"]

    # Round trip through ranker.safetensors + ranker.json.
    files = r1.save(str(tmp_path / "model"))
    assert set(files) == {"ranker.safetensors", "ranker.json"}
    loaded = Ranker.load(str(tmp_path / "model"))
    # Two members, each stopped on its own users, averaged into one model.
    assert [m["seed"] for m in s1["ensemble"]] == [s1["seed"], s1["seed"] + 1]
    assert isinstance(loaded.model, DCNEnsemble) and len(loaded.model.members) == 2
    assert loaded.space.neighbours is not None and len(loaded.space.neighbours.indices)
    np.testing.assert_array_equal(loaded.space.neighbours.sims, r1.space.neighbours.sims)
    hist, cands = ["i0", "i4", "i8"], ["i1", "i2", "i3", "i12", "unknown-item"]
    ctx = {
        "timestamp": int(inter["timestamp"].max()) + DAY,
        "retrieval_scores": [0.9, 0.8, 0.1, 0.5, 0.0],
    }
    a = r1.score("u1", hist, cands, ctx)
    b = loaded.score("u1", hist, cands, ctx)
    assert a.shape == (5,) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)

    # Train/serve parity: the offline point-in-time path and the serving snapshot agree
    # for a request after the end of the log.
    seen = pd.concat([train, val])
    log = EventLog(seen, loaded.space.item_index())
    retrieval = Retrieval(retriever, items, items["item_id"], users)
    t = log.end + 3600
    req = LabeledRequest("u2", t, positives={}, exclude=np.array([], np.int64))
    ex = featurize(loaded.space, log, retrieval, [req], n_candidates=10)
    offline = predict(loaded.model, ex)
    hist_u2 = log.user_history("u2", t)[0].tolist()
    served = loaded.score(
        "u2",
        hist_u2,
        list(loaded.space.item_ids[ex.rows]),
        {"timestamp": t, "retrieval_scores": ex.retrieval},
    )
    np.testing.assert_allclose(offline, served, rtol=0, atol=1e-5)


def test_tampered_weights_are_refused(small_params, tmp_path):
    inter, items, users = tiny_data(n_users=12, n_items=16, n_events=300)
    train, val, _ = _split(inter)
    ranker, _ = train_ranker(
        small_params.with_overrides(
            {"ranker.epochs": 1, "ranker.feature_groups": [], "ranker.ensemble": 1}
        ),
        FakeRetriever(items["item_id"]),
        train,
        val,
        items,
        users,
        progress=False,
        mlflow_run=False,
    )
    assert not ranker.space.uses("popularity") and not ranker.model.use_ids
    ranker.save(str(tmp_path))
    p = tmp_path / "ranker.safetensors"
    blob = bytearray(p.read_bytes())
    blob[-1] ^= 0xFF
    p.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="checksum"):
        Ranker.load(str(tmp_path))


@pytest.mark.servers
def test_training_is_logged_to_mlflow(small_params, mlflow_tracking):
    import mlflow

    from shortlist.tracking import configure

    inter, items, users = tiny_data(n_users=12, n_items=16, n_events=300)
    train, val, _ = _split(inter)
    p = small_params.with_overrides({"ranker.epochs": 2, "ranker.early_stopping_patience": 2})
    train_ranker(p, FakeRetriever(items["item_id"]), train, val, items, users, progress=False)
    configure(p)
    runs = mlflow.search_runs(filter_string="tags.`shortlist.stage` = 'train_ranker'")
    assert len(runs) >= 1
    run_id = runs.iloc[0]["run_id"]
    client = mlflow.MlflowClient()
    assert len(client.get_metric_history(run_id, "ndcg_at_20")) == 2
    assert "ranker_curves.png" in [a.path for a in client.list_artifacts(run_id)]
    assert runs.iloc[0]["params.ranker.candidates"] == "12"


def test_request_metrics_counts_missed_positives():
    ex = RankerRows(
        dense=np.zeros((4, 1), np.float32),
        user_idx=np.zeros(4, np.int64),
        item_idx=np.zeros(4, np.int64),
        rows=np.arange(4),
        labels=np.array([0, 1, 0, 0], np.float32),
        weights=np.ones(4, np.float32),
        retrieval=np.array([0.9, 0.8, 0.7, 0.1], np.float32),
        retrieved=np.array([True, True, True, False]),
        offsets=np.array([0, 4]),
        n_relevant=np.array([2]),  # one positive retrieval never returned
        user_ids=["u"],
    )
    m = request_metrics(ex, np.array([0.0, 1.0, 0.5, 9.0], np.float32), [10])
    assert m["recall@10"] == pytest.approx(0.5)
    assert m["ndcg@10"] == pytest.approx(1.0 / (1.0 + 1.0 / np.log2(3)))
    assert (
        make_requests(
            pd.DataFrame(columns=["user_id", "item_id", "timestamp", "weight"]),
            pd.DataFrame(columns=["user_id", "item_id", "timestamp", "weight"]),
            {},
        )
        == []
    )


def test_cut_points_label_the_items_from_each_cut_on():
    day = 86_400
    part = pd.DataFrame(
        {
            "user_id": ["u"] * 4 + ["v"],
            "item_id": ["a", "b", "c", "d", "a"],
            "timestamp": [1 * day, 2 * day, 2 * day, 4 * day, 3 * day],
            "weight": [1.0, 2.0, 3.0, 4.0, 5.0],
        }
    )
    seen = pd.DataFrame({"user_id": ["u"], "item_id": ["e"], "timestamp": [0], "weight": [1.0]})
    index = {i: k for k, i in enumerate("abcde")}
    one = make_requests(part, seen, index)
    assert [(r.user_id, r.timestamp, r.positives) for r in one] == [
        ("u", day, {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0}),
        ("v", 3 * day, {0: 5.0}),
    ]
    assert one[0].exclude.tolist() == [4]
    # Two cuts for u: at its first event, then at round(4 / 2) = index 2, which shares its
    # timestamp with index 1, so the cut moves to the next new timestamp (index 3).
    two = make_requests(part, seen, index, cut_points=2)
    assert [(r.user_id, r.cut, r.timestamp, sorted(r.positives)) for r in two] == [
        ("u", 0, day, [0, 1, 2, 3]),
        ("u", 1, 4 * day, [3]),
        ("v", 0, 3 * day, [0]),
    ]
    # More cuts than events: one per distinct timestamp at most.
    many = make_requests(part, seen, index, cut_points=10)
    assert [r.timestamp for r in many if r.user_id == "u"] == [day, 2 * day, 4 * day]


@pytest.mark.parametrize(("use_ids", "rank"), [(True, 0), (False, 0), (True, 3)])
def test_ensemble_is_the_members_mean_logit(use_ids, rank):
    torch.manual_seed(0)
    members = [
        DCNRanker(
            6, 3, 5, id_dim=4, cross_layers=2, hidden_dims=[8, 4], use_ids=use_ids, cross_rank=rank
        )
        for _ in range(3)
    ]
    for m in members:  # non-trivial cross weights
        for layer in m.cross:
            torch.nn.init.normal_(layer.linear.weight, std=0.3)
    ens = DCNEnsemble(members).eval()
    d, u, i = torch.randn(7, 6), torch.arange(7) % 4, torch.arange(7) % 6
    with torch.inference_mode():
        expected = torch.stack([m.eval()(d, u, i) for m in members]).mean(0)
        torch.testing.assert_close(ens(d, u, i), expected, rtol=1e-5, atol=1e-6)
        # Loading new weights drops the packed copy.
        again = DCNEnsemble.from_config(ens.config).eval()
        again(d, u, i)
        again.load_state_dict(ens.state_dict())
        torch.testing.assert_close(again(d, u, i), expected, rtol=1e-5, atol=1e-6)
