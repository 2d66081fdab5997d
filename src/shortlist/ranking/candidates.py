"""Candidate generation for the ranker through the retrieval path serving uses.

Item embeddings from the item tower go into the FAISS index of `shortlist.index.ann`
(exact flat inner product on catalogs up to `index.flat_max_items`, as in the bundle), the
query tower embeds the user's history as of the request, and the top N items the user has
not already seen become the candidates. Training, evaluation and serving therefore see the
same candidate distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from shortlist.data import schema

if TYPE_CHECKING:
    import faiss

    from shortlist.config import Params
    from shortlist.models.two_tower import TwoTowerRetriever


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, rows) per query: the one place the search backend is chosen."""
    from shortlist.index import ann

    return ann.search(index, queries, k)


class Retrieval:
    """A trained retriever bound to a catalog: item embeddings, index, query embedding."""

    def __init__(
        self,
        retriever: TwoTowerRetriever,
        items: pd.DataFrame,
        catalog: Sequence[str],
        users: pd.DataFrame | None = None,
        params: Params | None = None,
    ) -> None:
        from shortlist.index import ann
        from shortlist.models.vectors import serving_item_vectors

        self.retriever = retriever
        self.users = users
        self.catalog = np.asarray([str(i) for i in catalog], dtype=object)
        table = items.assign(**{schema.ITEM_ID: items[schema.ITEM_ID].astype(str)})
        table = table.drop_duplicates(schema.ITEM_ID).set_index(schema.ITEM_ID)
        table = table.reindex(self.catalog).reset_index()
        # The serving score (`models.vectors`): with the inference popularity column when
        # the towers use one, plain embeddings otherwise.
        self.item_emb = np.ascontiguousarray(serving_item_vectors(retriever, table))
        self.index = ann.build_index(self.item_emb, params) if params is not None else None
        if self.index is None:
            import faiss

            self.index = faiss.IndexFlatIP(self.item_emb.shape[1])
            self.index.add(self.item_emb)

    def embed_queries(
        self, user_ids: Sequence[str], histories: Sequence[Sequence[str]], timestamps
    ) -> np.ndarray:
        from shortlist.models.vectors import serving_query_vectors

        return serving_query_vectors(
            self.retriever,
            [str(u) for u in user_ids],
            [list(map(str, h)) for h in histories],
            users=self.users,
            timestamps=list(timestamps),
            width=self.item_emb.shape[1],
        )

    def top_n(
        self, queries: np.ndarray, n: int, exclude: Sequence[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query (catalog rows, scores) of the best n rows not in its `exclude`."""
        extra = max((len(e) for e in exclude), default=0)
        k = min(n + extra, len(self.catalog))
        scores, rows = search(self.index, queries, k)
        out = []
        for r, ex in enumerate(exclude):
            keep = (rows[r] >= 0) & ~np.isin(rows[r], ex)
            out.append((rows[r][keep][:n].astype(np.int64), scores[r][keep][:n]))
        return out

    def score_rows(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Retrieval scores of given catalog rows for one query (e.g. random negatives)."""
        return (self.item_emb[rows] @ query).astype(np.float32)
