"""A bounded share of each list for items with no interactions.

Items nobody has interacted with yet are retrievable through their content (the
cold-start promise), but the towers place them by content alone and their scores are the
least certain: left unbounded they can fill a list. At most floor(max_share * k) of the
top k are such items (the best of them); the rest of the list keeps its order. Serving
and `export-recs` apply the same rule, and the share served is reported.
"""

from __future__ import annotations

import math

import numpy as np


def cold_slots(k: int, max_share: float) -> int:
    """How many of k slots items without interactions may take."""
    return int(math.floor(max(0.0, min(1.0, max_share)) * k + 1e-9))


def surplus_cold(is_cold: np.ndarray, k: int, max_share: float) -> np.ndarray:
    """Mask of a best-first list's cold items beyond the best `cold_slots(k)` of them:
    what serving drops from its candidates before it picks (or samples) k."""
    is_cold = np.asarray(is_cold, dtype=bool)
    return is_cold & (np.cumsum(is_cold) > cold_slots(k, max_share))


def cap_cold_order(is_cold: np.ndarray, k: int, max_share: float) -> np.ndarray:
    """A permutation of a best-first list whose first k hold at most `cold_slots(k)` cold
    items: the best ones; the cold items over the cap move just past the k-th position,
    everything else keeps its relative order."""
    n = len(is_cold)
    over = surplus_cold(is_cold, k, max_share)
    kept, surplus = np.flatnonzero(~over), np.flatnonzero(over)
    if not len(surplus) or n == 0:
        return np.arange(n)
    head = kept[:k]
    return np.concatenate([head, np.sort(np.concatenate([kept[k:], surplus]))])


def cap_cold_scores(
    scores: np.ndarray, cold_cols: np.ndarray, k: int, max_share: float
) -> np.ndarray:
    """Scores (users x catalog, best highest) whose top k per row hold at most
    `cold_slots(k)` cold columns: every cold column but the row's best ones is set to -inf.
    Modifies and returns `scores`."""
    cold_cols = np.asarray(cold_cols, dtype=np.int64)
    if not len(cold_cols) or scores.size == 0:
        return scores
    slots = cold_slots(k, max_share)
    if slots >= len(cold_cols):
        return scores
    sub = scores[:, cold_cols]
    if slots == 0:
        scores[:, cold_cols] = -np.inf
        return scores
    best = np.argpartition(-sub, slots - 1, axis=1)[:, :slots]
    keep = np.zeros(sub.shape, dtype=bool)
    np.put_along_axis(keep, best, True, axis=1)
    sub[~keep] = -np.inf
    scores[:, cold_cols] = sub
    return scores
