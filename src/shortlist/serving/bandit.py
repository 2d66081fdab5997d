"""A bandit for a system with no bundle yet: Thompson sampling over the catalog.

Before the first bundle is live there is no model to serve, but users can still get
lists that learn, and their traffic becomes the first training data. Each item has a
Beta(alpha, beta) posterior on its click probability (Beta-Bernoulli): every time the
bandit shows an item its beta grows by one (a trial, provisionally a failure); a
positive event on that shown item (click, watch, a custom kind with weight > 0) turns
the failure into a success (alpha + 1, beta - 1), once per shown item. Skips and
dismissals leave the failure standing.

Priors come from the catalog (`serving.bandit.catalog_dir`, default `data.dir`): the
item's interaction count where the dataset holds interactions (popular items start with
a higher prior mean, `prior_strength` pseudo-trials deep), else a flat prior; item
content is not used.

A list: the `pool` items with the highest posterior upper bound (mean + 2 sd; the
others have propensity exactly 0, a deterministic choice given the state) get one draw
each from their posterior, and the k highest draws are shown. The probability of an item
at a position under Thompson sampling has no closed form: the propensity logged is a
Monte Carlo estimate, the share of `draws` + 1 independent draws from the same posterior
snapshot (the served one included) that put this item at this position. Its relative
error is about 1 / sqrt(draws x p); the policy is logged as `thompson` so that readers
know the propensities are estimates.

The posterior lives in the serving process and is rebuilt when the process starts
(`replay`: every impression the bandit logged is a trial, every positive event on one of
them a success), so a restart keeps what it learned. Once a bundle is live the app
serves the bundle and the bandit only takes the events of the lists it served.

A catalog section with no interactions (the live bundle's cold items) is served by the
same bandit once a bundle is live (`serving.bandit.cold_section`): the deepest exploration
slot of a list shows one Thompson draw restricted to that section (`recommend(...,
only=...)`) when the list's cold share (`serving.max_cold_share`) has room for one more
cold item. It spends no slot the exploration budget does not already spend, and the cold
items learn from their own clicks instead of from their content-based scores alone. The
impressions log marks those draws (`bandit_draw`), so a restart replays them with the
bandit's own lists. The replay runs in a thread at start and `/ready` waits for it; no
list gets a cold-section draw before it is done, so nothing is counted twice.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

POLICY = "thompson"
BUNDLE_ID = "bandit"  # what responses and the impressions log name as the serving bundle
POSITIVE_BUILTIN = ("click", "watch")


@dataclass(frozen=True)
class BanditList:
    rows: np.ndarray
    item_ids: list[str]
    means: np.ndarray  # posterior means of the shown items (their score)
    propensities: np.ndarray  # Monte Carlo estimates of P(item at position)


class ThompsonBandit:
    """Thread-safe Beta-Bernoulli Thompson sampling over a fixed catalog."""

    def __init__(
        self,
        item_ids: Any,
        prior_mean: Any = None,
        *,
        prior_strength: float = 10.0,
        base_rate: float = 0.05,
        pool: int = 500,
        draws: int = 500,
        max_tracked_lists: int = 100_000,
        genres: Any = None,
    ) -> None:
        self.item_ids = np.asarray(item_ids, dtype=object).astype(str)
        self.row_of = {item: r for r, item in enumerate(self.item_ids)}
        n = len(self.item_ids)
        m = np.full(n, base_rate) if prior_mean is None else np.asarray(prior_mean, float)
        m = np.clip(m, 1e-4, 1 - 1e-4)
        self.alpha = prior_strength * m
        self.beta = prior_strength * (1 - m)
        self.pool = pool
        self.draws = draws
        self.max_tracked = max_tracked_lists
        self.genres = None if genres is None else np.asarray(genres, dtype=object)  # per item
        self._shown: OrderedDict[str, set[int]] = OrderedDict()  # request -> uncredited rows
        self._lock = threading.Lock()
        self.lists_served = 0
        self.successes = 0

    @classmethod
    def from_catalog(cls, directory: str, **kwargs: Any) -> ThompsonBandit | None:
        """A bandit over the items of a dataset directory (None when it holds no items):
        prior means from interaction counts when it has interactions."""
        import pandas as pd

        from shortlist.data import schema

        items_path = Path(directory) / schema.ITEMS
        if not items_path.exists():
            return None
        table = pd.read_parquet(items_path)
        table = table.assign(**{schema.ITEM_ID: table[schema.ITEM_ID].astype(str)})
        table = table.drop_duplicates(schema.ITEM_ID)
        ids = table[schema.ITEM_ID].to_numpy()
        if not len(ids):
            return None
        if "genres" in table.columns:
            kwargs.setdefault("genres", table["genres"].to_numpy(dtype=object))
        prior = None
        inter_path = Path(directory) / schema.INTERACTIONS
        if inter_path.exists():
            inter = pd.read_parquet(inter_path, columns=[schema.ITEM_ID])[schema.ITEM_ID]
            counts = inter.astype(str).value_counts().reindex(ids).fillna(0).to_numpy()
            if counts.sum() > 0:
                base = kwargs.get("base_rate", 0.05)
                rel = np.log1p(counts) / max(np.log1p(counts).mean(), 1e-9)
                prior = np.clip(base * rel, base / 10, 0.5)
        return cls(ids, prior, **kwargs)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def posterior_mean(self) -> np.ndarray:
        with self._lock:
            return self.alpha / (self.alpha + self.beta)

    def recommend(
        self,
        request_id: str,
        k: int,
        rng: np.random.Generator,
        exclude: set[str] | None = None,
        genres: set[str] | None = None,
        only: np.ndarray | None = None,
    ) -> BanditList:
        """Draw one list of at most k items (none of `exclude`; with `genres`, only items
        with at least one of them; with `only`, a boolean mask over the catalog's rows, only
        those) and count its items as shown trials."""
        with self._lock:
            a, b = self.alpha.copy(), self.beta.copy()
        allowed = np.ones(len(a), dtype=bool) if only is None else np.asarray(only, bool).copy()
        for item in exclude or ():
            r = self.row_of.get(item)
            if r is not None:
                allowed[r] = False
        if genres is not None:
            if self.genres is None:
                allowed[:] = False
            else:
                for r in np.flatnonzero(allowed):
                    g = self.genres[r]
                    allowed[r] = g is not None and any(x in genres for x in g)
        rows = np.flatnonzero(allowed)
        k = min(k, len(rows))
        if k == 0:
            return BanditList(np.zeros(0, np.int64), [], np.zeros(0), np.zeros(0))
        mean = a[rows] / (a[rows] + b[rows])
        sd = np.sqrt(a[rows] * b[rows] / ((a[rows] + b[rows]) ** 2 * (a[rows] + b[rows] + 1)))
        upper = mean + 2 * sd
        if len(rows) > self.pool:
            rows = rows[np.argpartition(-upper, self.pool - 1)[: self.pool]]
        theta = rng.beta(a[rows], b[rows], size=(self.draws + 1, len(rows)))
        top = _top_k(theta, k)  # (draws + 1, k): pool positions, best first
        shown = top[0]
        hits = (top == shown[None, :]).sum(axis=0)
        prop = hits / (self.draws + 1)
        chosen = rows[shown]
        with self._lock:
            self.beta[chosen] += 1.0
            self._shown[request_id] = set(chosen.tolist())
            while len(self._shown) > self.max_tracked:
                self._shown.popitem(last=False)
            self.lists_served += 1
        return BanditList(
            chosen,
            self.item_ids[chosen].tolist(),
            a[chosen] / (a[chosen] + b[chosen]),
            prop,
        )

    def replay(self, impressions: Any, events: Any) -> int:
        """Apply logged history: `impressions` (request_id, item_id rows the bandit showed)
        and `events` (request_id, item_id, kind, value). Returns the successes credited."""
        rows = [self.row_of.get(str(i)) for i in impressions["item_id"]]
        known = [r for r in rows if r is not None]
        with self._lock:
            np.add.at(self.beta, np.asarray(known, dtype=np.int64), 1.0)
            for rid, r in zip(impressions["request_id"], rows, strict=True):
                if r is not None:
                    self._shown.setdefault(str(rid), set()).add(r)
            while len(self._shown) > self.max_tracked:
                self._shown.popitem(last=False)
        credited = 0
        for rid, item, kind, value in zip(
            events["request_id"], events["item_id"], events["kind"], events["value"], strict=True
        ):
            v = None if value is None or value != value else float(value)
            credited += self.update(str(rid), str(item), is_positive(str(kind), v))
        return credited

    def update(self, request_id: str, item_id: str, positive: bool) -> bool:
        """Credit a positive event on an item the bandit showed in that list (once);
        returns whether the posterior changed."""
        if not positive:
            return False
        r = self.row_of.get(item_id)
        with self._lock:
            pending = self._shown.get(request_id)
            if r is None or pending is None or r not in pending:
                return False
            pending.discard(r)
            self.alpha[r] += 1.0
            self.beta[r] = max(self.beta[r] - 1.0, 1e-6)
            self.successes += 1
            return True

    def section(self, item_ids: Any) -> np.ndarray:
        """A boolean mask over the catalog's rows: the given items the catalog holds."""
        mask = np.zeros(self.n_items, dtype=bool)
        rows = [self.row_of.get(str(i)) for i in item_ids]
        mask[[r for r in rows if r is not None]] = True
        return mask

    def served(self, request_id: str) -> bool:
        with self._lock:
            return request_id in self._shown


def is_positive(kind: str, value: float | None) -> bool:
    """Whether an event counts as a success: a click or a watch, or a custom kind whose
    weight is above zero (skips and dismissals are not)."""
    if kind in POSITIVE_BUILTIN:
        return kind == "click" or (value or 0.0) > 0
    if kind in ("skip", "dismiss"):
        return False
    return (value or 0.0) > 0


def _top_k(theta: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k largest values, largest first."""
    if k < theta.shape[1]:
        part = np.argpartition(-theta, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(theta.shape[1]), (theta.shape[0], 1))
    vals = np.take_along_axis(theta, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)
