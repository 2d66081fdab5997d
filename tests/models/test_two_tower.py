"""Two-tower model: shapes, normalisation, cold items through content, determinism, persistence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shortlist.models.two_tower import TwoTowerRetriever

GENRES = ["Action", "Comedy", "Drama", "Horror"]


def tiny_data(seed: int = 0):
    """40 items, 30 users, 600 interactions; a user's taste follows one genre."""
    rng = np.random.default_rng(seed)
    items = pd.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(40)],
            "title": [f"Movie {k} of {GENRES[k % 4]} ({1980 + k})" for k in range(40)],
            "genres": [
                [GENRES[k % 4]] + ([GENRES[(k + 1) % 4]] if k % 5 == 0 else []) for k in range(40)
            ],
            "year": [float(1980 + k) if k % 7 else np.nan for k in range(40)],
        }
    )
    users = pd.DataFrame(
        {
            "user_id": [f"u{k}" for k in range(30)],
            "age": rng.integers(18, 70, size=30),
            "gender": rng.choice(["M", "F"], size=30),
            "occupation": rng.choice(["writer", "doctor", "student"], size=30),
        }
    )
    rows = []
    for u in range(30):
        taste = u % 4
        liked = [k for k in range(40) if k % 4 == taste]
        for n in range(20):
            k = int(rng.choice(liked)) if rng.random() < 0.8 else int(rng.integers(40))
            rows.append((f"u{u}", f"i{k}", 1_000_000 + u * 1000 + n * 60, 4.0))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "weight"])
    inter = inter.drop_duplicates(["user_id", "item_id"]).reset_index(drop=True)
    last = inter.groupby("user_id")["timestamp"].transform("max")
    train, validation = inter[inter["timestamp"] < last], inter[inter["timestamp"] == last]
    return train, validation, items, users


@pytest.fixture(scope="module")
def trained(tiny_params):
    from shortlist.models.fit import train_two_tower

    train, validation, items, users = tiny_data()
    model, report = train_two_tower(
        tiny_params, train, validation, items, users, seed=3, progress=False, mlflow_run=False
    )
    return model, report, (train, validation, items, users)


def test_shapes_and_normalisation(trained):
    model, report, (train, _, items, users) = trained
    assert model.embedding_dim == 16
    emb = model.embed_items(items)
    assert emb.shape == (40, 16) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert list(model.item_ids) == list(items["item_id"])
    ids = ["u0", "u1", "stranger"]
    hist = model.histories_from(train, ids)
    assert hist[2] == [] and len(hist[0]) == 5
    hist[1] = [*hist[1], "never-seen-item"]  # unknown history ids are ignored
    q = model.embed_users(ids, hist, users, timestamps=[1_000_000, None, 0])
    assert q.shape == (3, 16) and q.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-5)
    q_no_unknown = model.embed_users(ids[1:2], [hist[1][:-1]], users, timestamps=[None])
    np.testing.assert_allclose(q[1], q_no_unknown[0], atol=1e-6)
    assert report["best_epoch"] >= 1 and len(report["history"]) >= 1
    assert len(model.fingerprint) == 64


def test_history_respects_order(trained):
    model, _, (train, *_) = trained
    [hist] = model.histories_from(train, ["u3"])
    mine = train[train["user_id"] == "u3"].sort_values(["timestamp", "item_id"])
    assert hist == mine["item_id"].tolist()[-5:]


def test_cold_items_are_embedded_from_content(trained):
    model, *_ = trained
    cold = pd.DataFrame(
        {
            "item_id": ["new-a", "new-b", "new-c"],
            "title": ["A brand new film", "A brand new film", "A brand new film"],
            "genres": [["Horror"], ["Horror"], ["Comedy"]],
            "year": [2001.0, 2001.0, 2001.0],
        }
    )
    emb = model.embed_items(cold)
    # Same content, both out of vocabulary: the same vector (up to float rounding of
    # the batched matrix product).
    np.testing.assert_allclose(emb[0], emb[1], rtol=0, atol=1e-6)
    assert np.abs(emb[0] - emb[2]).max() > 1e-2  # different genres: different vectors


def test_same_seed_same_weights(tiny_params, trained):
    from shortlist.models.fit import train_two_tower

    model, _, data = trained
    again, _ = train_two_tower(tiny_params, *data, seed=3, progress=False, mlflow_run=False)
    assert again.fingerprint == model.fingerprint
    other, _ = train_two_tower(tiny_params, *data, seed=4, progress=False, mlflow_run=False)
    assert other.fingerprint != model.fingerprint


def test_save_load_round_trip(trained, tmp_path):
    model, _, (train, _, items, users) = trained
    model.save(str(tmp_path / "m"))
    assert {"towers.safetensors", "towers.json", "items.parquet"} <= {
        p.name for p in (tmp_path / "m").iterdir()
    }
    loaded = TwoTowerRetriever.load(str(tmp_path / "m"))
    assert loaded.fingerprint == model.fingerprint
    np.testing.assert_array_equal(loaded.embed_items(items), model.embed_items(items))
    ids = ["u0", "u7", "nobody"]
    hist = model.histories_from(train, ids)
    np.testing.assert_array_equal(
        loaded.embed_users(ids, hist, users), model.embed_users(ids, hist, users)
    )
    np.testing.assert_array_equal(loaded.item_ids, model.item_ids)


def test_tampered_weights_are_refused(trained, tmp_path):
    model, *_ = trained
    model.save(str(tmp_path / "m"))
    path = tmp_path / "m" / "towers.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="fingerprint"):
        TwoTowerRetriever.load(str(tmp_path / "m"))


def test_popularity_term_folds_into_one_extra_dimension(trained):
    model, _, (train, _, items, users) = trained
    saved = model.meta.get("inference_popularity_weight")
    model.meta["inference_popularity_weight"] = 0.5
    try:
        iv = model.item_vectors(items)
        ids = ["u0", "u1"]
        qv = model.query_vectors(ids, model.histories_from(train, ids), users)
        plain = model.embed_users(ids, model.histories_from(train, ids), users)
        pop = model.log_popularity(items["item_id"])
    finally:
        model.meta["inference_popularity_weight"] = saved
    assert iv.shape == (40, 17)
    # More popular items get a larger log popularity.
    counts = train["item_id"].value_counts().reindex(items["item_id"]).fillna(0).to_numpy()
    assert pop[np.argmax(counts)] > pop[np.argmin(counts)]
    expected = plain @ model.embed_items(items).T + 0.5 * model.temperature * pop[None, :]
    np.testing.assert_allclose(qv @ iv.T, expected, atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        {"towers.history_mode": "leave_one_out"},
        {"towers.history_mode": "causal", "towers.ema_decay": 0.9},
    ],
)
def test_training_knobs_train_save_and_load(tiny_params, tmp_path, overrides):
    from shortlist.models.fit import train_two_tower

    train, validation, items, users = tiny_data()
    p = tiny_params.with_overrides(overrides)
    kw = {"seed": 3, "progress": False, "mlflow_run": False}
    model, report = train_two_tower(p, train, validation, items, users, **kw)
    again, _ = train_two_tower(p, train, validation, items, users, **kw)
    np.testing.assert_array_equal(model.item_vectors(items), again.item_vectors(items))
    assert report["best_epoch"] >= 1 and np.isfinite(report["history"][0]["loss"])
    model.save(str(tmp_path))
    loaded = TwoTowerRetriever.load(str(tmp_path))
    ids = ["u0", "u1"]
    hist = model.histories_from(train, ids)
    np.testing.assert_allclose(
        loaded.embed_users(ids, hist, users), model.embed_users(ids, hist, users), atol=1e-6
    )
