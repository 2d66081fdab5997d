"""The simulated world and its ground truth.

Contract: the world is the synthetic generator's (`shortlist.data.synth`), built from a
`SimSpec`; its latent item factors and user tastes are the truth. A user's true
preference for an item is sigmoid(taste . item - `pref_offset`) (taste at the end of the
generated period); a shown item at position j is engaged (a click) with probability
preference x `position_bias` (1 / log2(j + 2)). `write_world` lands the generated
history as a dataset directory (the data contract's tables). Nothing here draws clicks:
the loop does, with its own seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SimSpec:
    """The simulated world and loop (sizes small enough for one core in minutes)."""

    users: int = 300
    items: int = 400
    interactions: int = 6000
    topics: int = 8
    period_days: int = 60
    rounds: int = 10
    retrain_every: int = 1
    k: int = 10
    seed: int = 0
    pref_offset: float = 3.0  # preference = sigmoid(taste . item - pref_offset)
    promote: str = "blessed"  # "blessed" (as the DAG) or "always" (canary only)


class Truth:
    """True preferences of the synthetic world's users for its items, and the click model."""

    def __init__(self, spec: SimSpec, now: float) -> None:
        from shortlist.data.synth import SynthSpec, make_world

        self.synth = SynthSpec(
            users=spec.users,
            items=spec.items,
            interactions=spec.interactions,
            seed=spec.seed,
            topics=spec.topics,
            period_days=spec.period_days,
            start_timestamp=int(now) - spec.period_days * 86_400,
            threads=1,
        )
        self.world = make_world(self.synth)
        users = np.arange(spec.users)
        end = np.full(spec.users, self.synth.end_timestamp, dtype=np.int64)
        taste = self.world.taste(users, end, self.synth)
        affinity = taste.astype(np.float64) @ self.world.item_factors.T.astype(np.float64)
        self.pref = 1.0 / (1.0 + np.exp(-(affinity - spec.pref_offset)))  # (U, M)

    @staticmethod
    def user(user_id: str) -> int:
        return int(str(user_id)[1:])

    @staticmethod
    def item(item_id: str) -> int:
        return int(str(item_id)[1:])

    def preference(self, user_id: str, item_ids: list[str]) -> np.ndarray:
        return self.pref[self.user(user_id), [self.item(i) for i in item_ids]]

    def click_probability(self, user_id: str, item_ids: list[str]) -> np.ndarray:
        return self.preference(user_id, item_ids) * position_bias(len(item_ids))


def position_bias(n: int) -> np.ndarray:
    """Examination probability of positions 0..n-1: 1 / log2(position + 2)."""
    return 1.0 / np.log2(np.arange(n) + 2.0)


def write_world(truth: Truth, data_dir: Path) -> dict[str, Any]:
    """The generated history as a dataset directory (the data contract's tables)."""
    from shortlist.data.io import write_snapshot_manifest
    from shortlist.data.synth import write_synth
    from shortlist.storage import open_store

    checksums, rows = write_synth(truth.synth, data_dir, progress=False)
    store = open_store(str(data_dir))
    return write_snapshot_manifest(
        store, checksums, "synth", {"synth": truth.synth.as_dict()}, rows=rows
    )
