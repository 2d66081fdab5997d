"""Ranking metrics over a full ranking, computed per user on dense score blocks.

Definitions (binary relevance; `rel` is the user's set of held-out items, `hit_j` is 1
when the item at rank j (1-based) is in `rel`):

- Recall@K = sum_{j<=K} hit_j / |rel|. The denominator is |rel|, not min(|rel|, K): a
  user with more held-out items than K cannot reach 1. This is the common definition
  and the one the protocol's reference numbers were measured with.
- CappedRecall@K = sum_{j<=K} hit_j / min(|rel|, K), reported as ``capped_recall@K``: it
  reaches 1 whenever the top K is all hits. Some published numbers call this "recall";
  on the ml-100k benchmark protocol the reference values quoted for "Recall@20" match
  this variant, not the standard one (see benchmarks/README.md).
- NDCG@K = DCG@K / IDCG@K with DCG@K = sum_{j<=K} hit_j / log2(j + 1) and the ideal DCG
  over min(|rel|, K) hits in the top ranks.
- HitRate@K = 1 if any hit in the top K else 0.
- MRR = 1 / rank of the best-ranked relevant item in the FULL ranking (not truncated at
  K); 0 when no relevant item can be ranked at all.
- Coverage@K = distinct items recommended in anyone's top K / catalog size.
- Popularity percentile of an item = share of catalog items strictly less popular in
  train plus half the ties, in [0, 100]; reported as the mean over all top-K slots.

Scores of -inf mean "not rankable" (seen in train, outside the candidate set, or unknown
to the model): such positions never count as recommendations, so a user with fewer than
K rankable items simply gets a shorter list. Ties among finite scores are broken by the
lower catalog index, so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

#: Score cells one block of `mean_ranking_metrics_in_blocks` holds (128 MiB of float32:
#: 32 users a block at a million items, few enough blocks that re-reading the item
#: vectors for each does not dominate).
BLOCK_CELLS = 1 << 25


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k column indices per row, best first, and a mask of positions that are real.

    Returns (idx, valid), both (n_rows, k'): k' = min(k, n_cols); `valid` is False where
    the score is -inf (nothing rankable was left).
    """
    n, m = scores.shape
    k = min(k, m)
    if k == 0:
        return np.zeros((n, 0), np.int64), np.zeros((n, 0), bool)
    if k < m:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        part_scores = np.take_along_axis(scores, part, axis=1)
        idx = np.take_along_axis(part, np.lexsort((part, -part_scores), axis=1), axis=1)
        # argpartition picks an arbitrary subset among ties at the boundary; redo those
        # rows exactly (lower index wins). -inf boundaries need no fix: never counted.
        kth = part_scores.min(axis=1)
        tied = np.isfinite(kth) & ((scores >= kth[:, None]).sum(axis=1) > k)
        for r in np.flatnonzero(tied):
            cand = np.flatnonzero(scores[r] >= kth[r])
            idx[r] = cand[np.lexsort((cand, -scores[r, cand]))[:k]]
    else:
        idx = np.lexsort((np.broadcast_to(np.arange(m), scores.shape), -scores), axis=1)
    top_scores = np.take_along_axis(scores, idx, axis=1)
    return idx, np.isfinite(top_scores)


def discounts(k: int) -> np.ndarray:
    """1 / log2(rank + 1) for ranks 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def ranking_metrics(
    hits: np.ndarray, n_relevant: np.ndarray, ks: Sequence[int]
) -> dict[str, np.ndarray]:
    """Per-user recall/ndcg/hitrate at each K from a (n_users, Kmax) hit matrix.

    `hits[u, j]` is True when the item at rank j+1 of user u is relevant; `n_relevant[u]`
    is |rel| (> 0). Columns beyond the list length must be False.
    """
    hits = np.asarray(hits, dtype=bool)
    n_rel = np.asarray(n_relevant, dtype=np.float64)
    if np.any(n_rel <= 0):
        raise ValueError("every evaluated user needs at least one relevant item")
    kmax = hits.shape[1]
    disc = discounts(max(max(ks), 1))
    ideal_cum = np.concatenate([[0.0], np.cumsum(disc)])
    out: dict[str, np.ndarray] = {}
    for k in ks:
        kk = min(k, kmax)
        h = hits[:, :kk]
        n_hits = h.sum(axis=1)
        dcg = (h * disc[:kk]).sum(axis=1)
        idcg = ideal_cum[np.minimum(n_rel, k).astype(np.int64)]
        out[f"recall@{k}"] = n_hits / n_rel
        out[f"capped_recall@{k}"] = n_hits / np.minimum(n_rel, k)
        out[f"ndcg@{k}"] = dcg / idcg
        out[f"hitrate@{k}"] = (n_hits > 0).astype(np.float64)
    return out


def reciprocal_rank(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1 / (full-ranking rank of each row's best relevant column); 0 if none is rankable.

    `relevant` is a boolean mask shaped like `scores`. Rank = 1 + number of columns with
    a strictly higher score + columns with an equal score and a lower index (the same
    tie rule as `top_k`).
    """
    masked = np.where(relevant, scores, -np.inf)
    best_col = masked.argmax(axis=1)  # first (lowest-index) column among the maxima
    rows = np.arange(scores.shape[0])
    best = masked[rows, best_col]
    higher = (scores > best[:, None]).sum(axis=1)
    cols = np.arange(scores.shape[1])
    ties_before = ((scores == best[:, None]) & (cols[None, :] < best_col[:, None])).sum(axis=1)
    rank = 1 + higher + ties_before
    return np.where(np.isfinite(best), 1.0 / rank, 0.0)


def popularity_percentile(counts: np.ndarray) -> np.ndarray:
    """Each item's train popularity as a mid-rank percentile in [0, 100].

    The most popular item of a catalog with distinct counts scores close to 100, the least
    popular close to 0; items with equal counts share the same value.
    """
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.size
    if n == 0:
        return np.zeros(0)
    order = np.sort(counts)
    lower = np.searchsorted(order, counts, side="left")
    upper = np.searchsorted(order, counts, side="right")
    return 100.0 * (lower + 0.5 * (upper - lower)) / n


def mean_ranking_metrics_in_blocks(
    score_block: Callable[[int, int], np.ndarray],
    relevant: Sequence[np.ndarray],
    ks: Sequence[int],
    n_cols: int,
    metrics: Sequence[str] = ("recall", "ndcg"),
    max_cells: int = BLOCK_CELLS,
) -> dict[str, float]:
    """Mean per-user metrics at each K (`ranking_metrics`' definitions) over the rows with
    relevant items, ranking every row against all `n_cols` columns without ever holding
    the whole (rows x columns) score matrix: at a million items and a hundred thousand
    users it would need hundreds of GiB.

    `score_block(start, stop)` returns the float scores of rows start..stop-1, -inf where a
    column is not rankable; it is called for consecutive blocks of at most `max_cells`
    cells. `relevant[r]` holds row r's relevant column indices. Each block keeps only its
    top K columns per row (torch.topk: ties at the cut fall where it puts them, which is
    good enough to pick an epoch; the reported evaluation uses `top_k`'s tie rule).
    """
    import torch

    names = [f"{m}@{k}" for m in metrics for k in ks]
    kmax = min(max(ks), n_cols)
    block_rows = max(1, max_cells // max(n_cols, 1))
    per_user: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, len(relevant), block_rows):
        stop = min(start + block_rows, len(relevant))
        rows = [r for r in range(start, stop) if len(relevant[r])]
        if not rows:
            continue
        scores = score_block(start, stop)
        if len(rows) < stop - start:
            scores = scores[np.asarray(rows) - start]
        values, top = torch.topk(torch.from_numpy(scores), kmax, dim=1)
        hits = np.stack([np.isin(top[j].numpy(), relevant[r]) for j, r in enumerate(rows)])
        hits &= torch.isfinite(values).numpy()
        block = ranking_metrics(hits, np.array([len(relevant[r]) for r in rows]), ks)
        for name in names:
            per_user[name].append(block[name])
    if not per_user[names[0]]:
        return dict.fromkeys(names, 0.0)
    return {name: float(np.concatenate(per_user[name]).mean()) for name in names}
