"""Tiny deterministic data and a stand-in retriever for ranker unit tests.

`FakeRetriever` has the TwoTowerRetriever surface the ranker uses (item_ids,
embed_items, embed_users, fingerprint); its query embedding is the mean of the history's
item vectors, so a leaked future history changes retrieval scores and candidates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

GENRES = ["Action", "Comedy", "Drama", "Horror"]
T0 = 880_000_000
DAY = 86_400


def tiny_data(n_users: int = 30, n_items: int = 40, n_events: int = 1500, seed: int = 0):
    """(interactions, items, users): each user prefers one genre; ratings favour it."""
    rng = np.random.default_rng(seed)
    items = pd.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(n_items)],
            "title": [f"Item {k}" for k in range(n_items)],
            "genres": [
                [GENRES[k % 4]] + ([GENRES[(k + 1) % 4]] if k % 3 == 0 else [])
                for k in range(n_items)
            ],
            "year": [np.nan if k == 5 else 1980.0 + k for k in range(n_items)],
        }
    )
    users = pd.DataFrame(
        {
            "user_id": [f"u{k}" for k in range(n_users)],
            "age": rng.integers(18, 60, n_users),
            "gender": rng.choice(["F", "M"], n_users),
        }
    )
    pref = rng.integers(0, 4, n_users)
    rows = []
    for _ in range(n_events):
        u = int(rng.integers(n_users))
        liked = [k for k in range(n_items) if k % 4 == pref[u]]
        k = int(rng.choice(liked)) if rng.random() < 0.7 else int(rng.integers(n_items))
        rating = 5.0 if k % 4 == pref[u] else float(rng.integers(1, 4))
        rows.append((f"u{u}", f"i{k}", T0 + int(rng.integers(0, 60 * DAY)), rating))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "weight"])
    inter = inter.drop_duplicates(["user_id", "item_id"]).reset_index(drop=True)
    inter["weight"] = inter["weight"].astype("float32")
    return inter, items, users


class FakeRetriever:
    fingerprint = "fake"

    def __init__(self, item_ids, dim: int = 8, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.item_ids = np.asarray([str(i) for i in item_ids])
        v = rng.normal(size=(len(item_ids), dim)).astype(np.float32)
        self._vec = dict(
            zip(self.item_ids, v / np.linalg.norm(v, axis=1, keepdims=True), strict=True)
        )
        self.dim = self.embedding_dim = dim

    def embed_items(self, items: pd.DataFrame, batch_size: int = 4096) -> np.ndarray:
        zero = np.zeros(self.dim, np.float32)
        return np.stack([self._vec.get(str(i), zero) for i in items["item_id"]])

    def embed_users(self, user_ids, histories, users=None, timestamps=None) -> np.ndarray:
        out = np.zeros((len(user_ids), self.dim), np.float32)
        for r, h in enumerate(histories):
            vs = [self._vec[str(i)] for i in h if str(i) in self._vec]
            if vs:
                m = np.mean(vs, axis=0)
                out[r] = m / max(np.linalg.norm(m), 1e-9)
        return out
