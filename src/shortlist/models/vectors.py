"""The serving score as vectors: what an inner-product index holds and what queries it.

The towers score dot / temperature + weight * log popularity. `TwoTowerRetriever` folds
the popularity term into one extra item column (`item_vectors`) whose query side is a
constant 1 (`query_vectors`), so an inner-product index serves exactly the score offline
evaluation measures. A vector *width* names the contract an index was built with: the
embedding alone (a retriever without the term, or a bundle built before the column was
indexed) or the embedding plus the column. These helpers are the one place that maps a
retriever and a width to rows, so the bundle, the ranker's candidates, the canary and
serving cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd


def vector_width(retriever: Any) -> int:
    """Width of the retriever's serving vectors (`index_dim`, else its embedding width)."""
    return int(getattr(retriever, "index_dim", retriever.embedding_dim))


def serving_item_vectors(
    retriever: Any, items: pd.DataFrame, *, width: int | None = None, batch_size: int = 4096
) -> np.ndarray:
    """(n, width) float32 item rows of the serving score. `width` defaults to the
    retriever's own; a width of the plain embedding gives the embeddings (older bundles)."""
    width = vector_width(retriever) if width is None else int(width)
    if width > int(retriever.embedding_dim):
        rows = retriever.item_vectors(items, batch_size=batch_size)
    else:
        rows = retriever.embed_items(items, batch_size=batch_size)
    return np.asarray(rows, dtype=np.float32)


def widen_queries(embeddings: np.ndarray, width: int) -> np.ndarray:
    """User-tower embeddings widened to `width`: the popularity column's query side is 1."""
    q = np.asarray(embeddings, dtype=np.float32)
    extra = int(width) - q.shape[1]
    if extra <= 0:
        return q
    return np.hstack([q, np.ones((len(q), extra), dtype=np.float32)])


def serving_query_vectors(
    retriever: Any,
    user_ids: Sequence[str],
    histories: Sequence[Sequence[str]],
    *,
    users: pd.DataFrame | None = None,
    timestamps: Sequence[float] | None = None,
    width: int | None = None,
) -> np.ndarray:
    """(n, width) float32 query rows matching `serving_item_vectors` of the same width."""
    width = vector_width(retriever) if width is None else int(width)
    emb = retriever.embed_users(user_ids, histories, users=users, timestamps=timestamps)
    return widen_queries(emb, width)
