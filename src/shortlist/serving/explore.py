"""Bounded exploration: a few slots of each list sampled, every propensity exact.

A deployed recommender only learns from what it shows. This policy spends a small,
fixed budget on showing other things, so that the next training data and the
off-policy estimates (`shortlist.eval.off_policy`) have support beyond the greedy list:

- The top `protected` positions are never touched: they show the greedy top items.
- `slots` positions below them (spread evenly over positions protected..k-1) are
  exploration slots; every other position shows the next greedy item, in rank order.
  So the list holds the greedy top k - slots, and the slots are drawn from the tail.
- The tail is the ranked candidates after those k - slots, at most `pool` of them. It is
  dealt round-robin into one disjoint sub-pool per slot (slot j gets tail ranks j,
  j + slots, ...), so the slots' draws are independent and an item can appear in one
  slot only.
- A slot draws from the under-exposed items of its sub-pool (cold items, or items whose
  popularity prior is in the tail's lowest `underexposed_quantile`) with probability
  `underexposed_share`, else uniformly from its whole sub-pool. With no under-exposed
  item in its sub-pool it draws uniformly from the sub-pool.

Hence the exact probability that item a is shown, at the one position it can take:
1.0 for the greedy part, and for a in slot j's sub-pool R_j with under-exposed part U_j:

    p(a) = share * [a in U_j] / |U_j| + (1 - share) / |R_j|     (U_j non-empty)
    p(a) = 1 / |R_j|                                            (U_j empty)

That is at once the probability of this item at this position and of this item in the
list at all (what `inclusion_probabilities` returns for every candidate, also used as a
target policy's probabilities in off-policy evaluation). The expected cost is the sum
of the greedy list's scores minus the expected sum of the served list's scores.

The cold-item cap (`serving.max_cold_share`) holds because the caller removes surplus
cold items from the candidates before any of them is shown or sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POLICY = "explore_slots"


@dataclass(frozen=True)
class ExplorationParams:
    """The knobs of the slot policy (`serving.exploration_*`)."""

    slots: int = 2
    protected: int = 3
    pool: int = 50
    underexposed_share: float = 0.5
    underexposed_quantile: float = 0.25

    @classmethod
    def from_serving(cls, serving) -> ExplorationParams:
        return cls(
            slots=serving.exploration_slots,
            protected=serving.exploration_protected,
            pool=serving.exploration_pool,
            underexposed_share=serving.exploration_underexposed_share,
            underexposed_quantile=serving.exploration_underexposed_quantile,
        )


@dataclass(frozen=True)
class Plan:
    """Where the slots are and what each may draw from, for one ranked candidate list."""

    k: int  # list length
    greedy: np.ndarray  # candidate indices shown deterministically, in list order
    positions: np.ndarray  # the slots' positions in the list
    pools: list[np.ndarray]  # per slot: candidate indices it draws from
    probabilities: list[np.ndarray]  # per slot: each pool member's draw probability

    @property
    def active(self) -> bool:
        return len(self.positions) > 0


@dataclass(frozen=True)
class Exploration:
    """One served list: candidate indices in list order and what the log needs."""

    order: np.ndarray
    propensities: np.ndarray
    explored: np.ndarray  # bool per position: drawn in an exploration slot
    expected_cost: float  # greedy score sum - expected served score sum (>= 0)
    policy: str


def slot_positions(k: int, slots: int, protected: int) -> np.ndarray:
    """Positions of the exploration slots: evenly spread below the protected top."""
    span = k - protected
    slots = min(slots, max(span, 0))
    if slots <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.array(
        [protected + ((j + 1) * span) // (slots + 1) for j in range(slots)], dtype=np.int64
    )


def plan(
    n_candidates: int,
    k: int,
    p: ExplorationParams,
    underexposed: np.ndarray | None = None,
) -> Plan:
    """The slot plan for a best-first list of `n_candidates` (indices 0..n-1).

    `underexposed`: per candidate, whether it may be drawn by the under-exposed share
    (only the tail's entries are read). No exploration when the list has no room below
    the protected positions or the tail offers no choice beyond what would fill the slots."""
    k = min(k, n_candidates)
    positions = slot_positions(k, p.slots, p.protected)
    n_slots = len(positions)
    tail = np.arange(k - n_slots, min(n_candidates, k - n_slots + p.pool))
    if n_slots == 0 or len(tail) <= n_slots:
        return Plan(k, np.arange(k), np.zeros(0, dtype=np.int64), [], [])
    pools, probs = [], []
    for j in range(n_slots):
        pool = tail[j::n_slots]
        prob = np.full(len(pool), 1.0 / len(pool))
        if underexposed is not None and p.underexposed_share > 0:
            under = np.asarray(underexposed, dtype=bool)[pool]
            if under.any():
                prob = (1.0 - p.underexposed_share) / len(pool) + (
                    p.underexposed_share * under / under.sum()
                )
        pools.append(pool)
        probs.append(prob)
    return Plan(k, np.arange(k - n_slots), positions, pools, probs)


def explore(
    scores: np.ndarray,
    k: int,
    p: ExplorationParams,
    rng: np.random.Generator,
    underexposed: np.ndarray | None = None,
) -> Exploration:
    """Draw one list from the slot policy over candidates given best first."""
    scores = np.asarray(scores, dtype=np.float64)
    pl = plan(len(scores), k, p, underexposed)
    if not pl.active:
        return Exploration(pl.greedy, np.ones(pl.k), np.zeros(pl.k, bool), 0.0, "deterministic")
    order = np.empty(pl.k, dtype=np.int64)
    prop = np.ones(pl.k)
    explored = np.zeros(pl.k, dtype=bool)
    explored[pl.positions] = True
    order[~explored] = pl.greedy
    for pos, pool, prob in zip(pl.positions, pl.pools, pl.probabilities, strict=True):
        i = rng.choice(len(pool), p=prob)
        order[pos] = pool[i]
        prop[pos] = prob[i]
    return Exploration(order, prop, explored, expected_cost(scores, pl), POLICY)


def expected_cost(scores: np.ndarray, pl: Plan) -> float:
    """Sum of the greedy top-k scores minus the expected score sum of the planned list."""
    greedy = float(scores[: pl.k].sum())
    expected = float(scores[pl.greedy].sum()) + sum(
        float(prob @ scores[pool]) for pool, prob in zip(pl.pools, pl.probabilities, strict=True)
    )
    return max(greedy - expected, 0.0)


def inclusion_probabilities(
    n_candidates: int,
    k: int,
    p: ExplorationParams,
    underexposed: np.ndarray | None = None,
) -> np.ndarray:
    """Per candidate (best first): the probability the policy shows it in the list."""
    pl = plan(n_candidates, k, p, underexposed)
    out = np.zeros(n_candidates)
    out[pl.greedy] = 1.0
    for pool, prob in zip(pl.pools, pl.probabilities, strict=True):
        out[pool] = prob
    return out
