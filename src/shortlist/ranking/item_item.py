"""The item-item blend: the retrieval score plus a weighted EASE item-item score.

EASE (Steck 2019) fits a dense item-item weight matrix B = -P / diag(P), P = (XᵀX + λI)⁻¹,
with a zero diagonal, in closed form. Its score of item j for a user is the sum of B[h, j]
over the items h of their history. It memorises co-consumption that a dot product of two
64-dimensional summaries smooths away, and it is strongest exactly where the towers are
weakest (histories without order, small catalogs). The blend re-orders the retrieved
candidates of one request by

    z(retrieval score) + weight * z(EASE score),

each standardised over that request's candidates, so the weight does not depend on the
scale either model happens to have; weight 0 is the retrieval order. The weight is chosen
on validation requests and the blend ships only when it beats the retrieval order on
users it did not choose on (`shortlist.ranking.decision`).

B is kept as each item's top `neighbours` weights (an `ItemNeighbours` table, so it lives
in the ranker's safetensors beside the rest). Catalogs above `max_items` fit B on the most
popular `max_items` items only (the inverse costs O(n³) time and O(n²) memory); the other
items score 0, which their standardised score treats as "no evidence".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from shortlist.data import schema
from shortlist.data.ids import catalog_positions, codes_of
from shortlist.ranking.cooccurrence import ItemNeighbours


def fit_ease(
    interactions: pd.DataFrame,
    item_index: dict[str, int],
    *,
    l2: float,
    neighbours: int,
    max_items: int,
) -> ItemNeighbours:
    """EASE weights of the catalog `item_index` (id -> position) fitted on `interactions`
    (user, item pairs; repeats count once; items outside the catalog are ignored), as each
    item's `neighbours` largest weights. Rows of items outside the fitted set are empty."""
    n_items = len(item_index)
    pos = catalog_positions(interactions[schema.ITEM_ID], item_index)
    known = pos >= 0
    if not known.any() or neighbours <= 0 or max_items <= 0:
        return ItemNeighbours.empty(n_items)
    users = pd.factorize(codes_of(interactions[schema.USER_ID])[known])[0]
    cols = pos[known]
    counts = np.bincount(cols, minlength=n_items)
    fitted = np.flatnonzero(counts)
    if len(fitted) > max_items:
        # The most popular items (ties by position), then back in position order.
        fitted = np.sort(fitted[np.lexsort((fitted, -counts[fitted]))[:max_items]])
    local = np.full(n_items, -1, np.int64)
    local[fitted] = np.arange(len(fitted))
    keep = local[cols] >= 0
    x = sp.csr_matrix(
        (np.ones(int(keep.sum()), np.float64), (users[keep], local[cols[keep]])),
        shape=(int(users.max()) + 1, len(fitted)),
    )
    x.data[:] = 1.0  # duplicates were summed by the constructor: binarise
    k = min(neighbours, len(fitted) - 1)
    if k <= 0:
        return ItemNeighbours.empty(n_items)
    gram = _gram(x, l2)
    b = _inverse_in_place(gram)
    del gram
    # B = -P / diag(P) with a zero diagonal, in place: one n x n matrix at a time.
    b /= -np.diag(b)[None, :]
    np.fill_diagonal(b, 0.0)
    top, w = _top_per_row(b, k)
    lengths = np.zeros(n_items, np.int64)
    lengths[fitted] = k
    indptr = np.zeros(n_items + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    return ItemNeighbours(
        indptr, fitted[top].ravel().astype(np.int32), w.ravel().astype(np.float32)
    )


def _gram(x: sp.csr_matrix, l2: float, block: int = 1024) -> np.ndarray:
    """XᵀX + l2·I, dense and Fortran-ordered, built a block of columns at a time: the
    sparse product at 10,000 items holds up to 10⁸ entries (1.2 GB) beside its dense copy.
    The entries are exact integer counts, so the blocks give the same matrix."""
    n = x.shape[1]
    xt, xc = x.T.tocsr(), x.tocsc()
    gram = np.empty((n, n), np.float64, order="F")
    for s in range(0, n, block):
        gram[:, s : s + block] = (xt @ xc[:, s : s + block]).toarray()
    gram[np.diag_indices_from(gram)] += l2
    return gram


def _inverse_in_place(gram: np.ndarray) -> np.ndarray:
    """The inverse of the symmetric `gram`, as `np.linalg.inv` computes it (LAPACK gesv
    against the identity) but factorising `gram` in its own buffer and solving into the
    identity's: two n x n matrices live instead of four (0.8 GB each at 10,000 items).
    `gram` is overwritten. The result is Fortran-ordered. (scipy's LAPACK: on some CPUs it
    differs from numpy's own OpenBLAS build in the last bit.)"""
    from scipy.linalg import lapack

    n = len(gram)
    # LAPACK works on Fortran order; a C-ordered symmetric matrix read transposed is
    # itself, so neither layout is copied.
    a = gram if gram.flags.f_contiguous else gram.T
    _, _, inv, info = lapack.dgesv(a, np.eye(n, order="F"), overwrite_a=True, overwrite_b=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"singular EASE gram matrix (LAPACK gesv info {info})")
    return inv


def _top_per_row(b: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k largest entries of `b`, largest first (ties in column order), and their
    columns; in blocks of rows, so the temporaries stay a block's size."""
    top = np.empty((len(b), k), np.int64)
    w = np.empty((len(b), k), b.dtype)
    for s in range(0, len(b), block):
        rows = np.ascontiguousarray(b[s : s + block])
        part = np.argpartition(-rows, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(rows, part, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")
        top[s : s + block] = np.take_along_axis(part, order, axis=1)
        w[s : s + block] = np.take_along_axis(vals, order, axis=1)
    return top, w


def item_item_scores(
    table: ItemNeighbours, history: np.ndarray, candidates: np.ndarray
) -> np.ndarray:
    """Per candidate position, the sum of the table's weights from each history position
    (positions outside the table, -1 included, contribute and receive nothing)."""
    candidates = np.asarray(candidates, np.int64)
    out = np.zeros(len(candidates), np.float64)
    flat = table.entries_of(np.asarray(history, np.int64))
    if not len(flat) or not len(candidates):
        return out
    order = np.argsort(candidates, kind="stable")
    sorted_c = candidates[order]
    targets = table.indices[flat].astype(np.int64)
    at = np.searchsorted(sorted_c, targets)
    hit = at < len(sorted_c)
    hit[hit] = sorted_c[at[hit]] == targets[hit]
    per = np.bincount(
        at[hit], weights=table.sims[flat][hit].astype(np.float64), minlength=len(sorted_c)
    )
    # Repeated candidates share one sorted slot's total only at the first copy: spread it.
    first = np.searchsorted(sorted_c, sorted_c)
    out[order] = per[first]
    return out


def standardise(x: np.ndarray) -> np.ndarray:
    """(x - mean) / std over one request's candidates; all zeros when x is constant."""
    x = np.asarray(x, np.float64)
    if not len(x):
        return x
    sd = x.std()
    return (x - x.mean()) / sd if sd > 1e-12 else np.zeros_like(x)


def blend(retrieval: np.ndarray, item_item: np.ndarray, weight: float) -> np.ndarray:
    """The blend score of one request's candidates (higher is better)."""
    return standardise(retrieval) + weight * standardise(item_item)


def blend_rows(
    retrieval: np.ndarray, item_item: np.ndarray, offsets: np.ndarray, weight: float
) -> np.ndarray:
    """`blend` of each request r over rows offsets[r]:offsets[r + 1] of flat row arrays."""
    out = np.empty(len(retrieval), np.float64)
    for r in range(len(offsets) - 1):
        sl = slice(int(offsets[r]), int(offsets[r + 1]))
        out[sl] = blend(retrieval[sl], item_item[sl], weight)
    return out


def rows_item_item(
    table: ItemNeighbours,
    histories: Sequence[np.ndarray],
    rows: np.ndarray,
    offsets: np.ndarray,
) -> np.ndarray:
    """`item_item_scores` of each request's rows (catalog positions) against its history."""
    out = np.zeros(len(rows), np.float64)
    for r, hist in enumerate(histories):
        sl = slice(int(offsets[r]), int(offsets[r + 1]))
        out[sl] = item_item_scores(table, hist, rows[sl])
    return out


__all__ = [
    "blend",
    "blend_rows",
    "fit_ease",
    "item_item_scores",
    "rows_item_item",
    "standardise",
]
