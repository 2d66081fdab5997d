"""Recall/NDCG@k of the ranker's requests, each ranking its own candidate rows: what early
stopping and the ship decision measure. The metric definitions are those of
`shortlist.eval.metrics.ranking_metrics`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shortlist.eval.metrics import ranking_metrics
from shortlist.ranking.featurize import RankerRows


def request_metrics(
    ex: RankerRows, scores: np.ndarray, ks: Sequence[int], *, retrieved_only: bool = True
) -> dict[str, float]:
    """Mean Recall/NDCG@k over requests when each request's rows are ordered by `scores`.

    Only retrieved rows are ranked (as in serving); the denominator is every positive of
    the request, so items retrieval missed count as misses.
    """
    per = per_request_metrics(ex, scores, ks, retrieved_only=retrieved_only)
    return {k: float(v.mean()) if len(v) else 0.0 for k, v in per.items()}


def per_request_metrics(
    ex: RankerRows, scores: np.ndarray, ks: Sequence[int], *, retrieved_only: bool = True
) -> dict[str, np.ndarray]:
    """Recall/NDCG@k of each request with positives (see `request_metrics`)."""
    kmax = max(ks)
    hits, n_rel = [], []
    for r in range(len(ex)):
        sl = ex.request(r)
        if ex.n_relevant[r] == 0:
            continue
        keep = ex.retrieved[sl] if retrieved_only else np.ones(sl.stop - sl.start, bool)
        s, y = scores[sl][keep], ex.labels[sl][keep]
        order = np.lexsort((np.arange(len(s)), -s))[:kmax]
        h = np.zeros(kmax, bool)
        h[: len(order)] = y[order] > 0
        hits.append(h)
        n_rel.append(ex.n_relevant[r])
    if not hits:
        return {f"{m}@{k}": np.zeros(0) for k in ks for m in ("recall", "ndcg")}
    per = ranking_metrics(np.stack(hits), np.asarray(n_rel), ks)
    return {k: np.asarray(v) for k, v in per.items() if not k.startswith("hitrate")}
