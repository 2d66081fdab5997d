"""Item-item co-occurrence neighbours: the ItemKNN signal as a ranker feature.

The towers score a candidate by one dot product of two summaries; they cannot say "this
candidate is the strongest neighbour of the third film the user watched". An item-item
table can: for each item its `k` most similar items by shrunk cosine similarity of their
user sets, sim(i, j) = |U_i & U_j| / (sqrt(|U_i| |U_j|) + shrink). The ranker's
`cooccurrence` feature group sums and maxes these similarities between a candidate and the
user's history (`cooccurrence_features`).

The table is a snapshot fitted on a fixed set of interactions, like the towers: for
training it is fitted on the towers' training part (never on the ranker's labels), and the
saved ranker carries one refitted on everything the feature log holds, as the popularity
snapshot does. It is stored sparse (CSR rows: indptr, indices, similarities), so its size
is n_items * k, and building it never forms a dense item x item matrix.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from shortlist.data import schema
from shortlist.data.ids import catalog_positions, codes_of

#: Item rows of the co-occurrence product computed at once, at most.
BLOCK_ITEMS = 16_384
#: Co-occurrence entries (bounded above) computed at once: ~24 bytes each before the top-k,
#: so a block of popular items at a 1M catalog cannot take more than ~1 GB.
BLOCK_ENTRIES = 40_000_000


@dataclass
class ItemNeighbours:
    """Top-k similar items per catalog position, as CSR rows sorted by similarity."""

    indptr: np.ndarray  # (n_items + 1,) int64
    indices: np.ndarray  # (nnz,) int32 catalog positions
    sims: np.ndarray  # (nnz,) float32, each row descending

    @property
    def n_items(self) -> int:
        return len(self.indptr) - 1

    @classmethod
    def empty(cls, n_items: int) -> ItemNeighbours:
        return cls(np.zeros(n_items + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32))

    @classmethod
    def fit(
        cls,
        interactions: pd.DataFrame,
        item_index: dict[str, int],
        *,
        neighbours: int,
        shrink: float,
    ) -> ItemNeighbours:
        """Fit on `interactions` (user, item pairs; repeats count once; items outside
        `item_index` are ignored). Items without co-occurrences get empty rows."""
        n_items = len(item_index)
        pos = catalog_positions(interactions[schema.ITEM_ID], item_index)
        known = pos >= 0
        if not known.any() or neighbours <= 0:
            return cls.empty(n_items)
        # Rows in order of first appearance among the known events.
        users = pd.factorize(codes_of(interactions[schema.USER_ID])[known])[0]
        cols = pos[known]
        x = sp.csr_matrix(
            (np.ones(len(cols), np.float32), (users, cols)), shape=(users.max() + 1, n_items)
        )
        x.data[:] = 1.0  # duplicates were summed by the constructor: binarise
        xt = x.T.tocsr()
        norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
        # Entries of item i's row are at most its users' summed history lengths.
        bound = np.minimum(xt @ np.asarray(x.sum(axis=1)).ravel(), n_items)
        rows, idx, vals = [], [], []
        for start, stop in blocks(bound, BLOCK_ENTRIES, BLOCK_ITEMS):
            co = (xt[start:stop] @ x).tocoo()  # (block, n_items) co-occurrence counts
            r = co.row.astype(np.int64) + start
            c = co.col.astype(np.int64)
            keep = r != c
            r, c, v = r[keep], c[keep], co.data[keep]
            sim = v / (norms[r] * norms[c] + shrink + 1e-12)
            r, c, sim = _top_per_row(r, c, sim, neighbours)
            rows.append(r)
            idx.append(c)
            vals.append(sim)
        r = np.concatenate(rows)
        indptr = np.zeros(n_items + 1, np.int64)
        np.cumsum(np.bincount(r, minlength=n_items), out=indptr[1:])
        return cls(
            indptr, np.concatenate(idx).astype(np.int32), np.concatenate(vals).astype(np.float32)
        )

    def _spans(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first entry, number of entries) of each row; 0 entries outside the table."""
        positions = np.asarray(positions, dtype=np.int64)
        valid = (positions >= 0) & (positions < self.n_items)
        safe = np.where(valid, positions, 0)
        starts = self.indptr[safe]
        return starts, np.where(valid, self.indptr[safe + 1] - starts, 0)

    def n_entries(self, positions: np.ndarray) -> int:
        """How many entries `entries_of(positions)` returns."""
        return int(self._spans(positions)[1].sum())

    def entries_of(self, positions: np.ndarray) -> np.ndarray:
        """Flat indices into `indices` / `sims` of the given rows' entries, concatenated in
        the order of `positions`; positions outside the table contribute nothing."""
        starts, lengths = self._spans(positions)
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(0, np.int64)
        # Entry j of row r sits at starts[r] + j: one repeat of each row's offset from its
        # place in the output plus a running index (no per-entry owner array needed).
        first = np.cumsum(lengths) - lengths
        return np.repeat(starts - first, lengths) + np.arange(total)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            f"{prefix}.indptr": self.indptr,
            f"{prefix}.indices": self.indices,
            f"{prefix}.sims": self.sims,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> ItemNeighbours:
        return cls(
            arrays[f"{prefix}.indptr"].astype(np.int64),
            arrays[f"{prefix}.indices"].astype(np.int32),
            arrays[f"{prefix}.sims"].astype(np.float32),
        )


def blocks(cost: np.ndarray, budget: float, max_rows: int) -> list[tuple[int, int]]:
    """Consecutive [start, stop) row ranges of at most `max_rows` rows whose summed `cost`
    stays within `budget` (a row costing more than the budget alone is its own block)."""
    out, start, total = [], 0, 0.0
    for i, c in enumerate(np.asarray(cost, dtype=np.float64).tolist()):
        if i > start and (total + c > budget or i - start >= max_rows):
            out.append((start, i))
            start, total = i, 0.0
        total += c
    if len(cost):
        out.append((start, len(cost)))
    return out


def _top_per_row(r: np.ndarray, c: np.ndarray, sim: np.ndarray, k: int):
    """Keep each row's k largest similarities (ties by smaller column), rows ascending."""
    order = np.lexsort((c, -sim, r))
    r, c, sim = r[order], c[order], sim[order]
    if not len(r):
        return r, c, sim
    row_start = np.r_[0, np.flatnonzero(r[1:] != r[:-1]) + 1]
    first = np.repeat(row_start, np.diff(np.r_[row_start, len(r)]))
    keep = (np.arange(len(r)) - first) < k
    return r[keep], c[keep], sim[keep]


_scratch = threading.local()


def _slot_table(n_items: int) -> np.ndarray:
    """This thread's int64 table of -1s, at least n_items long (callers restore the -1s)."""
    table = getattr(_scratch, "slots", None)
    if table is None or len(table) < n_items:
        table = np.full(n_items, -1, np.int64)
        _scratch.slots = table
    return table


#: Names of the `cooccurrence` columns, in order.
COOCCURRENCE_NAMES = (
    "cooc_log_score",
    "cooc_log_score_recent",
    "cooc_max_sim",
    "cooc_log_hits",
    "cooc_score_share",
    "cooc_log_rank",
)


def cooccurrence_features(
    table: ItemNeighbours,
    history: np.ndarray,
    candidates: np.ndarray,
    *,
    recent: int,
    n_ranked: int | None = None,
) -> np.ndarray:
    """(n, 6) float32 ItemKNN features of the candidates against the user's history.

    history: catalog positions, oldest first (already capped by the caller); candidates:
    catalog positions, unique (-1: unknown item, all zeros). Columns: log1p of the ItemKNN score
    (sum over history items of sim(h, c), c among h's neighbours), the same over the
    `recent` latest items, the largest single similarity, log1p of how many history items
    have c as a neighbour, the score over the best score among the first `n_ranked`
    candidates (the retrieved ones), and log1p of the candidate's rank by score among them.
    """
    cand = np.asarray(candidates, dtype=np.int64)
    n = len(cand)
    out = np.zeros((n, len(COOCCURRENCE_NAMES)), np.float32)
    if n == 0:
        return out
    history = np.asarray(history, dtype=np.int64)
    flat = table.entries_of(history)
    nr = n if n_ranked is None else n_ranked
    if len(flat):
        # Which neighbour entries are candidates: one gather through a per-thread
        # position -> candidate row table (a binary search per entry costs ~10x more).
        slots = _slot_table(table.n_items)
        known = np.flatnonzero((cand >= 0) & (cand < table.n_items))
        slots[cand[known]] = known
        try:
            row = slots[table.indices[flat]]
        finally:
            slots[cand[known]] = -1
        at = np.flatnonzero(row >= 0)
        row = row[at]
        s = table.sims[flat[at]].astype(np.float64)
        # Entries come in history order, so the `recent` latest items' entries are the tail.
        recent_rows = history[-recent:] if recent > 0 else history[:0]
        is_recent = at >= len(flat) - table.n_entries(recent_rows)
        score = np.bincount(row, weights=s, minlength=n)
        score_recent = np.bincount(row[is_recent], weights=s[is_recent], minlength=n)
        best = np.zeros(n)
        np.maximum.at(best, row, s)
        hits = np.bincount(row, minlength=n)
    else:
        score = score_recent = best = np.zeros(n)
        hits = np.zeros(n, np.int64)
    top = score[:nr].max() if nr else 0.0
    share = score / top if top > 0 else np.zeros(n)
    ref = np.sort(score[:nr])[::-1]
    rank = 1 + np.searchsorted(-ref, -score, side="left")
    out[:] = np.stack(
        [np.log1p(score), np.log1p(score_recent), best, np.log1p(hits), share, np.log1p(rank)], 1
    )
    out[cand < 0] = 0.0
    return out


__all__: Sequence[str] = (
    "COOCCURRENCE_NAMES",
    "ItemNeighbours",
    "cooccurrence_features",
)
