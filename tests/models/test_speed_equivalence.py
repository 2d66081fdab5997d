"""The vectorised encoders give exactly the inputs (and embeddings) of the row-by-row ones.

`legacy_*` below are the original per-row implementations, kept here as the reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from shortlist.data import schema
from shortlist.models.features import (
    _TOKEN,
    TITLE_TOKENS,
    FeatureState,
    _as_list,
    encode_context,
    stable_hash,
)
from shortlist.models.two_tower import TwoTowerRetriever, build_net, history_matrix


def legacy_encode_items(state: FeatureState, items: pd.DataFrame) -> dict[str, np.ndarray]:
    n = len(items)
    genres = np.zeros((n, state.n_genres), dtype=np.float32)
    if "genres" in items and state.n_genres:
        gidx = {g: k for k, g in enumerate(state.genre_vocab)}
        for r, g in enumerate(items["genres"]):
            for name in _as_list(g):
                k = gidx.get(name)
                if k is not None:
                    genres[r, k] = 1.0
    titles = items["title"] if "title" in items else pd.Series([""] * n)
    tokens = np.zeros((n, TITLE_TOKENS), dtype=np.int64)
    for r, title in enumerate(titles):
        toks = _TOKEN.findall(str(title).lower() if isinstance(title, str) else "")
        toks = toks[:TITLE_TOKENS]
        if toks:
            h = stable_hash(toks) % np.uint64(state.title_hash_buckets)
            tokens[r, : len(toks)] = h.astype(np.int64) + 1
    numerics = np.zeros((n, state.n_item_numeric), dtype=np.float32)
    for k, (col, (mean, std)) in enumerate(state.item_numeric.items()):
        v = (
            pd.to_numeric(items[col], errors="coerce").to_numpy(dtype=float)
            if col in items
            else np.full(n, np.nan)
        )
        missing = ~np.isfinite(v)
        numerics[:, 2 * k] = np.where(missing, 0.0, (v - mean) / std)
        numerics[:, 2 * k + 1] = missing
    index = {i: k + 1 for k, i in enumerate(state.item_vocab)}
    ids = items[schema.ITEM_ID].astype(str)
    return {
        "item_idx": np.fromiter((index.get(str(i), 0) for i in ids), dtype=np.int64),
        "genres": genres,
        "title": tokens,
        "numerics": numerics,
    }


def legacy_encode_users(state: FeatureState, user_ids, users) -> dict[str, np.ndarray]:
    ids = [str(u) for u in user_ids]
    n = len(ids)
    cols = list(state.user_categorical) + list(state.user_numeric)
    feats = np.zeros((n, len(cols)), dtype=np.int64)
    if users is not None and len(cols) and len(users):
        table = users.assign(**{schema.USER_ID: users[schema.USER_ID].astype(str)})
        table = table.drop_duplicates(schema.USER_ID).set_index(schema.USER_ID)
        rows = table.reindex(ids)
        for k, (col, vocab) in enumerate(state.user_categorical.items()):
            if col in rows:
                idx = {v: j + 1 for j, v in enumerate(vocab)}
                feats[:, k] = [idx.get(str(v), 0) if pd.notna(v) else 0 for v in rows[col]]
        base = len(state.user_categorical)
        for k, (col, edges) in enumerate(state.user_numeric.items()):
            if col in rows:
                v = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=float)
                b = np.searchsorted(np.asarray(edges), v, side="right") + 1
                feats[:, base + k] = np.where(np.isfinite(v), b, 0)
    return {"user_idx": state.user_index(ids), "user_feats": feats}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def awkward_items(n: int = 3000, seed: int = 0, list_genres: bool = False) -> pd.DataFrame:
    """Titles with > TITLE_TOKENS tokens, unicode, punctuation only, missing and non-string."""
    rng = np.random.default_rng(seed)
    words = ["The", "Love", "NIGHT", "Übermensch", "İstanbul", "x-2", "a.b", "007", "9½", "!!"]
    titles: list = [" ".join(rng.choice(words, rng.integers(0, 12))) for _ in range(n)]
    titles[1], titles[2], titles[3], titles[4] = None, np.nan, 1995, "... --- ..."
    genre_pool = ["Action", "Comedy", "Drama", "Sci-Fi", "Unknown-Genre"]
    genres: list = ["|".join(rng.choice(genre_pool, rng.integers(0, 4))) for _ in range(n)]
    genres[5], genres[6], genres[7] = None, np.nan, "Action||Comedy|"
    if list_genres:
        genres = [_as_list(g) for g in genres]
        genres[8] = np.array(["Drama", "Action"], dtype=object)
    ids = [f"i{k}" for k in range(n)]
    ids[9] = ids[10]  # a duplicated id
    return pd.DataFrame(
        {
            "item_id": ids,
            "title": titles,
            "genres": genres,
            "year": np.where(rng.random(n) < 0.1, np.nan, rng.integers(1920, 2020, n)),
        }
    )


def awkward_users(n: int = 200, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users = pd.DataFrame(
        {
            "user_id": [f"u{k}" for k in range(n)],
            "age": rng.integers(10, 80, n).astype(float),
            "gender": rng.choice(["M", "F"], n).astype(object),
            "occupation": rng.choice(["writer", "doctor", "student", "artist"], n).astype(object),
        }
    )
    users.loc[3, "age"] = np.nan
    users.loc[4, "gender"] = None
    users.loc[5, "user_id"] = "u6"  # duplicated id: the first row wins
    return users


def fitted(items: pd.DataFrame, users: pd.DataFrame, buckets: int = 512) -> FeatureState:
    rng = np.random.default_rng(2)
    known = items[schema.ITEM_ID].to_numpy()[: int(len(items) * 0.7)]
    train = pd.DataFrame(
        {
            schema.USER_ID: users[schema.USER_ID].to_numpy()[rng.integers(0, 150, 4000)],
            schema.ITEM_ID: known[rng.integers(0, len(known), 4000)],
            schema.TIMESTAMP: rng.integers(0, 10**9, 4000),
        }
    )
    # Fit the vocabularies on users with a restricted occupation set: unseen values appear.
    fit_users = users.assign(occupation=users["occupation"].where(users.index % 3 > 0, "writer"))
    return FeatureState.fit(train, items, fit_users, title_hash_buckets=buckets, user_buckets=3)


@pytest.mark.parametrize("list_genres", [False, True])
def test_encode_items_matches_row_by_row(list_genres):
    items = awkward_items(list_genres=list_genres)
    state = fitted(awkward_items(), awkward_users())
    assert state.n_genres >= 4
    new = state.encode_items(items)
    assert_same(new, legacy_encode_items(state, items))
    assert new["title"].any() and new["genres"].any() and (new["item_idx"] == 0).any()
    # Small frames (the dict path of item_index) and a frame without title/genres columns.
    assert_same(state.encode_items(items.iloc[:7]), legacy_encode_items(state, items.iloc[:7]))
    bare = items[[schema.ITEM_ID, "year"]]
    assert_same(state.encode_items(bare), legacy_encode_items(state, bare))


def test_encode_users_matches_row_by_row():
    users = awkward_users()
    state = fitted(awkward_items(), users)
    assert state.user_categorical and state.user_numeric
    ids = ["u0", "u3", "u4", "u5", "u6", "u199", "nobody", "u0"] + [f"u{k}" for k in range(150)]
    for frame in (users, users.iloc[:30], users[users["user_id"] == "u7"], users.iloc[:0]):
        for want in (ids, ids[:3], ["u7"], ["nobody"], []):
            assert_same(
                state.encode_users(want, frame.reset_index(drop=True)),
                legacy_encode_users(state, want, frame.reset_index(drop=True)),
            )
    assert_same(state.encode_users(ids, None), legacy_encode_users(state, ids, None))


def tiny_retriever(items: pd.DataFrame, state: FeatureState) -> TwoTowerRetriever:
    torch.manual_seed(0)
    config = {
        "id_dim": 16,
        "hidden_dim": 32,
        "embedding_dim": 8,
        "history_len": 6,
        "temperature": 0.05,
    }
    net = build_net(state, config, items)
    with torch.no_grad():  # non-trivial weights everywhere, recency included
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return TwoTowerRetriever(net, state, config, items)


def legacy_embeddings(model: TwoTowerRetriever, items, ids, histories, users, ts):
    enc = legacy_encode_items(model.state, items)
    u = legacy_encode_users(model.state, ids, users)
    with torch.inference_mode():
        item_vecs = model.net.item_forward(*(torch.from_numpy(enc[k]) for k in enc)).numpy()
        user_vecs = model.net.query_forward(
            torch.from_numpy(u["user_idx"]),
            torch.from_numpy(u["user_feats"]),
            torch.from_numpy(history_matrix(histories, model.state, model.history_len)),
            torch.from_numpy(encode_context(ts, len(ids))),
        ).numpy()
    return item_vecs, user_vecs


def test_embeddings_match_and_survive_save_load(tmp_path):
    items, users = awkward_items(), awkward_users()
    items["title"] = items["title"].map(lambda t: t if t is None or isinstance(t, str) else None)
    state = fitted(items, users)
    model = tiny_retriever(items, state)
    ids = ["u1", "u6", "nobody", "u4"]
    hist = [["i1", "i2", "i3"], [], ["i5", "unknown", "i9"] * 5, ["i2999"]]
    ts = [1.7e9, np.nan, 0.0, 1.6e9]
    item_ref, user_ref = legacy_embeddings(model, items, ids, hist, users, ts)
    np.testing.assert_allclose(model.embed_items(items, batch_size=512), item_ref, atol=1e-6)
    np.testing.assert_allclose(model.embed_users(ids, hist, users, ts), user_ref, atol=1e-6)
    model.save(str(tmp_path / "m"))
    loaded = TwoTowerRetriever.load(str(tmp_path / "m"))
    np.testing.assert_allclose(loaded.embed_items(items), item_ref, atol=1e-6)
    np.testing.assert_allclose(loaded.embed_users(ids, hist, users, ts), user_ref, atol=1e-6)
    for k, u in enumerate(ids):  # one user at a time, as a request does
        one = users[users["user_id"] == u].reset_index(drop=True)
        got = loaded.query_vectors([u], [hist[k]], one, [ts[k]])
        np.testing.assert_allclose(got[0], user_ref[k], atol=1e-6)


def test_ml100k_encoders_match_row_by_row(ml100k_path):
    from shortlist.data.movielens import load_ml100k

    interactions, items, users = load_ml100k(ml100k_path)
    train = interactions[interactions[schema.ITEM_ID].astype(str).str[-1] != "7"]
    state = FeatureState.fit(train, items, users, title_hash_buckets=4096, user_buckets=4)
    assert_same(state.encode_items(items), legacy_encode_items(state, items))
    ids = users[schema.USER_ID].astype(str).tolist() + ["unseen-user"]
    assert_same(state.encode_users(ids, users), legacy_encode_users(state, ids, users))
    one = users.iloc[[17]].reset_index(drop=True)
    assert_same(state.encode_users(ids[17:18], one), legacy_encode_users(state, ids[17:18], one))
    model = tiny_retriever(items, state)
    item_ref, user_ref = legacy_embeddings(model, items, ids[:5], [["1", "2"]] * 5, users, None)
    np.testing.assert_allclose(model.embed_items(items), item_ref, atol=1e-6)
    np.testing.assert_allclose(
        model.embed_users(ids[:5], [["1", "2"]] * 5, users), user_ref, atol=1e-6
    )


def test_encode_users_dtype_corner_cases():
    """Integer ids, missing ids, and an integer column whose vocabulary was fitted as strings
    (the row-by-row path read it as "3" when every id was found, "3.0" otherwise)."""
    fit_users = pd.DataFrame(
        {"user_id": ["1", "2", "3"], "band": ["1", "2", "3"], "age": [20.0, 30.0, 40.0]}
    )
    train = pd.DataFrame({"user_id": ["1", "2"], "item_id": ["a", "b"], "timestamp": [0, 1]})
    items = pd.DataFrame({"item_id": ["a", "b"], "title": ["A", "B"]})
    state = FeatureState.fit(train, items, fit_users, title_hash_buckets=8)
    assert state.user_categorical == {"band": ["1", "2", "3"]}
    frames = [
        pd.DataFrame({"user_id": [1, 2, 3], "band": [3, 2, 1], "age": [25, 35, 99]}),
        pd.DataFrame({"user_id": ["1", None, np.nan], "band": ["2", "3", None], "age": [1, 2, 3]}),
        pd.DataFrame({"user_id": [1.0, 2.0], "band": ["1", "2"], "age": [True, False]}),
    ]
    for frame in frames:
        for big in (False, True):
            f = pd.concat([frame] * 30, ignore_index=True) if big else frame
            for ids in (["1", "2"], ["1", "9"], ["nan", "None", "3"], ["2.0"]):
                assert_same(state.encode_users(ids, f), legacy_encode_users(state, ids, f))


def test_title_with_the_row_separator_falls_back_to_row_by_row():
    items = awkward_items(200)
    state = fitted(items, awkward_users())
    items.loc[11, "title"] = "ab\x00cd ef GH"
    assert_same(state.encode_items(items), legacy_encode_items(state, items))
    one = items.iloc[[11]]
    assert_same(state.encode_items(one), legacy_encode_items(state, one))
    assert state.encode_items(items.iloc[:0])["title"].shape == (0, TITLE_TOKENS)
