"""Streaming item-frequency estimation for the logQ correction (Yi et al., RecSys 2019).

In-batch negatives are sampled proportionally to item frequency, so a plain in-batch
softmax over-penalises popular items. Subtracting log p(item) from each candidate's logit
corrects that bias. p comes from this estimator: two hash arrays, A (the step at which a
bucket was last seen) and B (an exponential moving average of the gap between sightings);
B <- (1 - alpha) B + alpha (t - A), and p ~= 1 / B. There is no vocabulary: any id
(string or integer) is hashed, so new items need no refit.

Warm-up: until a bucket has shown 1/alpha gaps, B is the plain mean of its gaps (the
EMA with alpha_n = 1/n), after that the EMA above. This removes the EMA's long memory of
its first, single-gap guess, so rare items converge as soon as they have a few sightings.

Steps count events: `update(ids, step)` treats ids as consecutive events at steps
step, step + 1, ..., so p estimates the per-event frequency of each id. Repeats of one
id inside a batch are applied in order, exactly as a one-by-one stream would.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shortlist.models.features import stable_hash

#: Above this many events x repeats of the commonest id (~1 s of looping), `update` scans;
#: below it the loop keeps the exact arithmetic of every smaller dataset trained so far.
LOOP_MAX_CELLS = 2_000_000_000


class StreamingFrequencyEstimator:
    def __init__(self, hash_buckets: int = 1 << 20, alpha: float = 0.01) -> None:
        if hash_buckets <= 0 or not 0 < alpha <= 1:
            raise ValueError("hash_buckets must be > 0 and 0 < alpha <= 1")
        self.hash_buckets = int(hash_buckets)
        self.alpha = float(alpha)
        self.last_seen = np.full(self.hash_buckets, -1, dtype=np.int64)  # A
        self.gap = np.zeros(self.hash_buckets, dtype=np.float64)  # B (0: not yet estimated)
        self.gaps_seen = np.zeros(self.hash_buckets, dtype=np.int64)  # gaps averaged into B
        self.steps_seen = 0

    def _buckets(self, ids: Any) -> np.ndarray:
        arr = np.asarray(ids)
        if arr.dtype.kind in "iu":
            # Integer ids (vocabulary indices): a multiplicative hash, no string round trip.
            h = arr.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            h ^= h >> np.uint64(29)
        else:
            h = stable_hash(arr)
        return (h % np.uint64(self.hash_buckets)).astype(np.int64)

    def update(self, ids: Any, step: int) -> None:
        """Record ids as events at steps step, step+1, ... (in order)."""
        buckets = self._buckets(ids)
        n = len(buckets)
        if n == 0:
            return
        steps = np.arange(step, step + n, dtype=np.int64)
        order = np.argsort(buckets, kind="stable")
        b_sorted = buckets[order]
        first = np.r_[True, b_sorted[1:] != b_sorted[:-1]]
        group_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n) - group_start
        repeats = int(rank.max()) + 1
        if n * repeats <= LOOP_MAX_CELLS:
            self._update_by_occurrence(buckets, steps, rank, repeats)
        else:
            self._update_by_scan(b_sorted, steps[order], first)
        self.steps_seen = max(self.steps_seen, step + n)

    def _update_by_occurrence(
        self, buckets: np.ndarray, steps: np.ndarray, rank: np.ndarray, repeats: int
    ) -> None:
        """The k-th occurrence of every bucket in one vectorised pass, k = 0, 1, ...: cost
        n x repeats, cheap for a batch, quadratic for a whole epoch of a popular item."""
        for k in range(repeats):
            sel = rank == k
            b, t = buckets[sel], steps[sel]
            prev = self.last_seen[b]
            seen = prev >= 0
            gap = (t - prev).astype(np.float64)
            count = self.gaps_seen[b]
            rate = np.maximum(self.alpha, 1.0 / (count + 1))
            est = self.gap[b]
            self.gap[b] = np.where(seen, (1 - rate) * est + rate * gap, est)
            self.gaps_seen[b] = count + seen
            self.last_seen[b] = t

    def _update_by_scan(self, b: np.ndarray, t: np.ndarray, first: np.ndarray) -> None:
        """The same recurrence in O(n) for events sorted by (bucket, step): per bucket,
        B_j = a_j B_(j-1) + c_j unrolls to B_0 prod(a) + sum_j c_j prod_(i>j) a_i, the
        products taken as exp of suffix sums of log a (equal to the loop within ~1e-9)."""
        n = len(b)
        starts = np.flatnonzero(first)
        ends = np.r_[starts[1:], n] - 1
        group = np.cumsum(first) - 1
        ub = b[starts]
        prev = np.empty(n, dtype=np.int64)
        prev[1:] = t[:-1]
        prev[starts] = self.last_seen[ub]
        seen = prev >= 0
        gap = (t - prev).astype(np.float64)
        before = np.cumsum(seen) - seen  # gaps earlier in the whole array
        count = self.gaps_seen[ub][group] + before - before[starts][group]
        rate = np.maximum(self.alpha, 1.0 / (count + 1))
        a = np.where(seen, 1.0 - rate, 1.0)
        c = np.where(seen, rate * gap, 0.0)
        # a = 0 (a bucket's first gap: rate 1) resets B; exp(-50) keeps the sums finite.
        log_a = np.log(np.maximum(a, np.exp(-50.0)))
        cum = np.cumsum(log_a)
        suffix = cum[ends][group] - cum  # sum of log a_i over the bucket's later events
        tail = np.add.reduceat(c * np.exp(suffix), starts)
        whole = cum[ends] - cum[starts] + log_a[starts]
        self.gap[ub] = self.gap[ub] * np.exp(whole) + tail
        self.gaps_seen[ub] += np.add.reduceat(seen.astype(np.int64), starts)
        self.last_seen[ub] = t[ends]

    def probability(self, ids: Any) -> np.ndarray:
        """Estimated per-event frequency of each id, in (0, 1].

        Ids seen at most once so far get the floor 1 / (events seen), the rarest
        frequency the stream can have shown so far.
        """
        b = self._buckets(ids)
        floor = 1.0 / max(self.steps_seen, 1)
        est = self.gap[b]
        p = np.where(est > 0, 1.0 / np.maximum(est, 1.0), floor)
        return np.clip(p, floor, 1.0)

    def state_dict(self) -> dict[str, Any]:
        return {
            "hash_buckets": self.hash_buckets,
            "alpha": self.alpha,
            "steps_seen": self.steps_seen,
        }
