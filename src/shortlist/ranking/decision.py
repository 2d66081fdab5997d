"""Whether the ranker ships: it must beat the order it re-ranks, on users it did not fit.

The ranker re-orders the retrieved candidates. On some data it cannot learn enough to do
better than the retrieval score it starts from, and then serving it makes every list worse.
The decision compares, request by request on validation users held out of both fitting
and early stopping (`ranker.decision_fraction`), NDCG@k of the ranker's order with NDCG@k
of the retrieval order over the same candidates, and ships the ranker only when the mean
gain exceeds `min_z` standard errors of the paired differences: a gain within noise is
not taken as a win.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class RankerDecision:
    shipped: bool
    metric: str
    ranker: float  # mean over held-out requests
    retrieval: float
    gain: float  # ranker - retrieval
    relative_gain: float  # gain / retrieval
    stderr: float  # standard error of the mean paired difference
    requests: int
    min_z: float
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def decide(
    ranker: np.ndarray,
    retrieval: np.ndarray,
    *,
    metric: str,
    min_z: float,
    name: str = "ranker",
) -> RankerDecision:
    """Paired decision on per-request metric values (same requests, same order); `name`
    says in the reason which order was judged (the network, or the item-item blend)."""
    ranker = np.asarray(ranker, dtype=np.float64)
    retrieval = np.asarray(retrieval, dtype=np.float64)
    if ranker.shape != retrieval.shape:
        raise ValueError(f"paired arrays differ in shape: {ranker.shape} vs {retrieval.shape}")
    n = len(ranker)
    if n < 2:
        return RankerDecision(
            False, metric, float(ranker.mean()) if n else 0.0,
            float(retrieval.mean()) if n else 0.0, 0.0, 0.0, float("inf"), n, min_z,
            f"only {n} held-out request(s): too few to show the {name} helps",
        )  # fmt: skip
    diff = ranker - retrieval
    gain = float(diff.mean())
    stderr = float(diff.std(ddof=1) / np.sqrt(n))
    base = float(retrieval.mean())
    rel = gain / base if base > 0 else 0.0
    shipped = gain > 0 and gain > min_z * stderr
    verdict = "ships" if shipped else "does not ship"
    reason = (
        f"{name} {verdict}: {metric} {ranker.mean():.4f} vs retrieval order {base:.4f} "
        f"({rel:+.1%}, gain {gain:+.4f} ± {stderr:.4f} over {n} held-out requests; "
        f"needs gain > {min_z:g} standard errors)"
    )
    return RankerDecision(
        shipped, metric, float(ranker.mean()), base, gain, rel, stderr, n, min_z, reason
    )
