"""The serving-score vectors: one width contract for the index and its queries."""

from __future__ import annotations

import numpy as np
import pandas as pd

from shortlist.models.vectors import (
    serving_item_vectors,
    serving_query_vectors,
    vector_width,
    widen_queries,
)


class Towers:
    """Two towers with a popularity column (index_dim = embedding_dim + 1)."""

    embedding_dim = 3
    index_dim = 4

    def embed_items(self, items, batch_size=4096):
        n = len(items)
        return np.tile(np.array([1.0, 0.0, 0.0], np.float32), (n, 1))

    def item_vectors(self, items, batch_size=4096):
        pop = np.arange(len(items), dtype=np.float32)[:, None]
        return np.hstack([self.embed_items(items), pop])

    def embed_users(self, user_ids, histories, users=None, timestamps=None):
        return np.full((len(user_ids), 3), 0.5, np.float32)


class Plain(Towers):
    """An embedding model without the popularity term."""

    index_dim = 3


ITEMS = pd.DataFrame({"item_id": ["a", "b", "c"]})


def test_width_selects_the_contract():
    t = Towers()
    assert vector_width(t) == 4 and vector_width(Plain()) == 3
    np.testing.assert_array_equal(serving_item_vectors(t, ITEMS), t.item_vectors(ITEMS))
    # A bundle built before the column was indexed: its width is the embedding's.
    np.testing.assert_array_equal(serving_item_vectors(t, ITEMS, width=3), t.embed_items(ITEMS))
    assert serving_item_vectors(t, ITEMS).dtype == np.float32


def test_queries_match_items_of_the_same_width():
    t = Towers()
    q = serving_query_vectors(t, ["u"], [["a"]])
    assert q.shape == (1, 4) and q[0, 3] == 1.0
    # query . item = embedding dot + the popularity column, the serving score.
    scores = q @ serving_item_vectors(t, ITEMS).T
    np.testing.assert_allclose(scores[0], 0.5 + np.arange(3))
    assert serving_query_vectors(t, ["u"], [["a"]], width=3).shape == (1, 3)
    assert serving_query_vectors(Plain(), ["u"], [["a"]]).shape == (1, 3)


def test_widen_never_narrows():
    q = np.zeros((2, 5), np.float32)
    assert widen_queries(q, 3).shape == (2, 5)
    np.testing.assert_array_equal(widen_queries(q, 7)[:, 5:], np.ones((2, 2)))
