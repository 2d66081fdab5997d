"""Candidate sources beside the towers: item-to-item neighbours and the recent trend.

The towers' top N is one view of relevance. The ItemKNN neighbours of what the user did
(`ItemNeighbours`, summed over the history) and what is popular now reach items that a
dot product of two summaries ranks low. The ranker ranks the union: the towers' N first,
in their order, then each extra source's best items not already there. An extra
candidate scores below the towers' N under the towers, so the retrieval-only order of
the union starts with the towers' top N: without a ranker the extra sources change
nothing, and the ranker's ship decision compares it with exactly that order.

Positions are catalog positions of one catalog (the ranker's); serving maps them to index
rows through item ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from shortlist.data import schema
from shortlist.ranking.cooccurrence import ItemNeighbours


def trend_popularity(
    interactions: pd.DataFrame, item_ids: np.ndarray, half_life_days: float
) -> np.ndarray:
    """Exponentially time-decayed interaction counts (half-life in days), scaled to max 1."""
    if not len(interactions):
        return np.zeros(len(item_ids), dtype=np.float32)
    ts = interactions[schema.TIMESTAMP].astype("int64").to_numpy()
    age_days = (ts.max() - ts) / 86_400.0
    w = np.exp2(-age_days / half_life_days)
    scores = pd.Series(w).groupby(interactions[schema.ITEM_ID].astype(str).to_numpy()).sum()
    out = scores.reindex(item_ids).fillna(0.0).to_numpy(dtype=np.float64)
    top = out.max()
    return (out / top if top > 0 else out).astype(np.float32)


def item_to_item(
    table: ItemNeighbours, history: np.ndarray, n: int, exclude: np.ndarray
) -> np.ndarray:
    """The n positions with the largest ItemKNN score against `history` (sum of
    similarities over the history items that have them as neighbours), best first, none
    in `exclude`. Ties break by position, so the result is deterministic."""
    if n <= 0 or table.n_items == 0:
        return np.zeros(0, np.int64)
    flat = table.entries_of(np.asarray(history, dtype=np.int64))
    if not len(flat):
        return np.zeros(0, np.int64)
    cand, inverse = np.unique(table.indices[flat].astype(np.int64), return_inverse=True)
    score = np.bincount(inverse, weights=table.sims[flat].astype(np.float64))
    keep = ~np.isin(cand, exclude)
    cand, score = cand[keep], score[keep]
    if len(cand) > n:
        part = np.argpartition(-score, n - 1)[:n]
        cand, score = cand[part], score[part]
    order = np.lexsort((cand, -score))
    return cand[order]


def first_allowed(order: np.ndarray, n: int, exclude: np.ndarray) -> np.ndarray:
    """The first n entries of `order` not in `exclude` (e.g. the most popular items)."""
    if n <= 0:
        return np.zeros(0, np.int64)
    out, start, chunk = [], 0, max(4 * n, 64)
    got = 0
    while got < n and start < len(order):
        block = order[start : start + chunk]
        block = block[~np.isin(block, exclude)]
        out.append(block)
        got += len(block)
        start += chunk
    return np.concatenate(out)[:n].astype(np.int64) if out else np.zeros(0, np.int64)


@dataclass
class CandidateSources:
    """The extra sources of one catalog and how many candidates each adds per request."""

    neighbours: ItemNeighbours | None
    popular_order: np.ndarray  # catalog positions, most popular first
    item_to_item: int = 0
    popular: int = 0

    @property
    def active(self) -> bool:
        return (self.item_to_item > 0 and self.neighbours is not None) or self.popular > 0

    def extra(self, history: np.ndarray, towers: np.ndarray, exclude: np.ndarray) -> np.ndarray:
        """Positions the extra sources add after the towers' candidates `towers`: the
        item-to-item best, then the most popular, without repeats, none in `exclude`."""
        if not self.active:
            return np.zeros(0, np.int64)
        taken = np.union1d(np.asarray(exclude, np.int64), np.asarray(towers, np.int64))
        parts = []
        if self.item_to_item > 0 and self.neighbours is not None:
            i2i = item_to_item(self.neighbours, history, self.item_to_item, taken)
            parts.append(i2i)
            taken = np.union1d(taken, i2i)
        if self.popular > 0:
            parts.append(first_allowed(self.popular_order, self.popular, taken))
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def extra_columns(
    sources: CandidateSources,
    history: np.ndarray,
    towers: np.ndarray,
    excluded: np.ndarray,
    pos_of_col: np.ndarray,
    col_of_pos: np.ndarray,
) -> np.ndarray:
    """`CandidateSources.extra` for a catalog laid out differently from the sources' own
    (an index's rows, an export's columns): `towers` and `excluded` are columns there,
    `history` positions of the sources' catalog; `pos_of_col` / `col_of_pos` map between
    the two (-1: absent). Returns columns; items the other catalog lacks are dropped."""
    t = pos_of_col[np.asarray(towers, np.int64)]
    e = pos_of_col[np.asarray(excluded, np.int64)]
    more = sources.extra(history, t[t >= 0], e[e >= 0])
    cols = col_of_pos[more]
    return cols[cols >= 0].astype(np.int64)


def catalog_maps(source_ids: np.ndarray, other_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pos_of_col, col_of_pos) between two catalogs of item ids (-1 where absent)."""
    src = pd.Index(np.asarray(source_ids).astype(str))
    other = pd.Index(np.asarray(other_ids).astype(str))
    return src.get_indexer(other).astype(np.int64), other.get_indexer(src).astype(np.int64)


def popular_order(trend: np.ndarray) -> np.ndarray:
    """Catalog positions by descending trend popularity (ties by position)."""
    return np.argsort(-np.asarray(trend, dtype=np.float64), kind="stable").astype(np.int64)


__all__ = [
    "CandidateSources",
    "catalog_maps",
    "extra_columns",
    "first_allowed",
    "item_to_item",
    "popular_order",
    "trend_popularity",
]
