"""Point-in-time ranking features: every value of an example is computed from events before it.

`FeatureSpace` is the static, fitted state (catalog, genre vocabulary, item content, user
features, id vocabularies, standardisation statistics), saved as JSON + arrays.
`FeatureSpace.transform` turns one request (user, history, time, candidates and their
retrieval scores) into a dense matrix plus user/item id indices for the model. The same
function serves training (item statistics from an `EventLog` as of each example's time,
`shortlist.ranking.event_log`) and serving (item statistics from a snapshot table
computed once at load time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from shortlist.data import schema
from shortlist.ranking.cooccurrence import (
    COOCCURRENCE_NAMES,
    ItemNeighbours,
    cooccurrence_features,
)
from shortlist.ranking.event_log import popularity_names

#: Feature groups. `retrieval`, `item` and `user` are always on; the others can be ablated.
GROUPS = ("retrieval", "item", "user", "crosses", "cooccurrence", "popularity", "ids")
ABLATABLE = ("crosses", "cooccurrence", "popularity", "ids")
#: Most recent history items used for the "recent taste" cross features.
RECENT_ITEMS = 10
#: Most recent history items any ranking feature looks at (history length, crosses,
#: co-occurrence). Training and serving cut here alike; a serving bundle must keep at least
#: this many items per user (`bundle.history_len`, checked by `build_bundle`), or a heavy
#: user's features would differ between the two.
FEATURE_HISTORY = 200
_MAX_CATEGORIES = 64


@dataclass
class Request:
    """One ranking request: who, when, what they did before (oldest first), what to rank."""

    user_id: str
    timestamp: int
    history: Sequence[str]
    candidates: np.ndarray  # catalog positions (int64)
    scores: np.ndarray  # retrieval scores of the candidates (float32)
    #: How many leading candidates came from retrieval (the rest are e.g. random negatives);
    #: ranks are taken among these. None: all of them.
    n_retrieved: int | None = None
    #: Scores of the full retrieved list when `candidates` is a sample of it (training
    #: with sampled hard negatives): ranks and gaps are taken against these.
    reference_scores: np.ndarray | None = None


@dataclass
class FeatureSpace:
    """Fitted, static feature state; `transform` makes the model inputs of one request."""

    item_ids: np.ndarray
    genres: list[str]
    item_genres: np.ndarray  # (n_items, G) float32 multi-hot
    item_numeric_names: list[str]
    item_numeric: np.ndarray  # (n_items, k) float32, NaN where unknown
    user_ids: list[str]  # id-embedding vocabulary (index 0 = unknown)
    user_numeric_names: list[str]
    user_categorical: dict[str, list[str]]
    user_table: dict[str, np.ndarray]  # user id -> static user feature row
    windows_days: list[int]
    groups: list[str]
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    #: Item-item neighbours for the `cooccurrence` group (a snapshot, see cooccurrence.py);
    #: None reads as a table without neighbours.
    neighbours: ItemNeighbours | None = None
    _item_pos: dict[str, int] = field(default_factory=dict, repr=False)
    _user_pos: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._item_pos = {str(i): k for k, i in enumerate(self.item_ids)}
        self._user_pos = {u: k + 1 for k, u in enumerate(self.user_ids)}
        # A trailing padding row for candidates outside the catalog (position -1).
        self._ig_pad = np.vstack([self.item_genres, np.zeros((1, len(self.genres)), np.float32)])
        k = self.item_numeric.shape[1]
        self._inum_pad = np.vstack([self.item_numeric, np.full((1, k), np.nan, np.float32)])
        self._item_numeric_mean = (
            np.nan_to_num(np.nanmean(self.item_numeric, axis=0))
            if (self.item_numeric.size and np.isfinite(self.item_numeric).any())
            else np.zeros(self.item_numeric.shape[1], np.float32)
        )
        self._n_user_static = sum(len(v) for v in self.user_categorical.values()) + 2 * len(
            self.user_numeric_names
        )

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        items: pd.DataFrame,
        users: pd.DataFrame | None,
        train_users: Sequence[str],
        *,
        windows_days: Sequence[int],
        groups: Sequence[str] = GROUPS,
        item_ids: Sequence[str] | None = None,
    ) -> FeatureSpace:
        """Static state from the item and user tables (no interactions: nothing to leak)."""
        items = items.copy()
        items[schema.ITEM_ID] = items[schema.ITEM_ID].astype(str)
        if item_ids is not None:
            items = items.set_index(schema.ITEM_ID).reindex([str(i) for i in item_ids])
            items = items.reset_index()
        ids = items[schema.ITEM_ID].to_numpy(object)
        genre_lists = [
            list(g) if isinstance(g, (list, tuple, np.ndarray)) else []
            for g in items.get("genres", pd.Series([[]] * len(items)))
        ]
        genres = sorted({str(g) for gl in genre_lists for g in gl})
        gpos = {g: k for k, g in enumerate(genres)}
        ig = np.zeros((len(items), len(genres)), np.float32)
        for r, gl in enumerate(genre_lists):
            for g in gl:
                ig[r, gpos[str(g)]] = 1.0
        num_cols = [
            c
            for c in items.columns
            if c not in (schema.ITEM_ID, "title", "genres")
            and pd.api.types.is_numeric_dtype(items[c])
        ]
        inum = items[num_cols].to_numpy(np.float32) if num_cols else np.zeros((len(items), 0))
        u_num: list[str] = []
        u_cat: dict[str, list[str]] = {}
        table: dict[str, np.ndarray] = {}
        if users is not None and len(users):
            users = users.copy()
            users[schema.USER_ID] = users[schema.USER_ID].astype(str)
            for c in users.columns:
                if c == schema.USER_ID:
                    continue
                if pd.api.types.is_numeric_dtype(users[c]):
                    u_num.append(c)
                else:
                    vals = users[c].dropna().astype(str)
                    if 1 < vals.nunique() <= _MAX_CATEGORIES:
                        u_cat[c] = sorted(vals.unique())
            rows = _user_rows(users, u_num, u_cat)
            table = dict(zip(users[schema.USER_ID], rows, strict=True))
        return cls(
            item_ids=ids,
            genres=genres,
            item_genres=ig,
            item_numeric_names=num_cols,
            item_numeric=inum.astype(np.float32),
            user_ids=sorted({str(u) for u in train_users}),
            user_numeric_names=u_num,
            user_categorical=u_cat,
            user_table=table,
            windows_days=[int(w) for w in windows_days],
            groups=list(groups),
        )

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def item_index(self) -> dict[str, int]:
        return dict(self._item_pos)

    def item_positions(self, ids: Sequence[str]) -> np.ndarray:
        """Catalog positions of item ids; -1 for ids outside the catalog."""
        get = self._item_pos.get
        ids = ids if isinstance(ids, list | tuple | np.ndarray) else list(ids)
        pos = np.array([get(i, -1) for i in ids], dtype=np.int64)
        # Ids are strings on every serving path; others (ints) miss and are looked up as
        # strings here, so the common case skips a str() per id.
        for k in np.flatnonzero(pos < 0):
            pos[k] = get(str(ids[k]), -1)
        return pos

    def uses(self, group: str) -> bool:
        return group in self.groups

    # ---- names ----------------------------------------------------------------------
    def feature_names(self) -> list[tuple[str, str]]:
        """(name, group) of every dense column, in order."""
        out = [("retrieval_score", "retrieval"), ("retrieval_gap", "retrieval")]
        out += [("retrieval_log_rank", "retrieval")]
        out += [(f"genre={g}", "item") for g in self.genres]
        for c in self.item_numeric_names:
            out += [(f"item_{c}", "item"), (f"item_{c}_missing", "item")]
        out += [("user_log_history_len", "user")]
        for c in self.user_numeric_names:
            out += [(f"user_{c}", "user"), (f"user_{c}_missing", "user")]
        for c, vals in self.user_categorical.items():
            out += [(f"user_{c}={v}", "user") for v in vals]
        if self.uses("crosses"):
            out += [
                (n, "crosses")
                for n in (
                    "genre_affinity_all",
                    "genre_affinity_recent",
                    "genre_max_share",
                    "genre_log_items_since",
                    "genre_never_seen",
                )
            ]
            for c in self.item_numeric_names:
                out += [(f"{c}_gap_to_user_mean", "crosses"), (f"{c}_abs_gap", "crosses")]
            out += [(f"user_share*genre={g}", "crosses") for g in self.genres]
        if self.uses("cooccurrence"):
            out += [(n, "cooccurrence") for n in COOCCURRENCE_NAMES]
        if self.uses("popularity"):
            out += [(n, "popularity") for n in popularity_names(self.windows_days)]
        return out

    @property
    def n_dense(self) -> int:
        return len(self.feature_names())

    # ---- transform ------------------------------------------------------------------
    def transform(self, req: Request, pop: np.ndarray | None) -> tuple[np.ndarray, int, np.ndarray]:
        """(dense (n, D) float32 standardised if fitted, user index, item indices (n,)).

        `pop` is `popularity_block` for the candidates as of the request (ignored when the
        popularity group is off). Item indices are catalog position + 1 (0 = unknown).
        """
        cand = np.asarray(req.candidates, dtype=np.int64)
        n = len(cand)
        s = np.asarray(req.scores, dtype=np.float32)
        nr = n if req.n_retrieved is None else req.n_retrieved
        ref_src = s[:nr] if req.reference_scores is None else req.reference_scores
        ref = np.sort(np.asarray(ref_src, np.float32))[::-1]
        rank = 1 + np.searchsorted(-ref, -s, side="left")
        top = ref[0] if len(ref) else 0.0
        blocks = [s[:, None], (s - top)[:, None], np.log1p(rank)[:, None].astype(np.float32)]
        safe = np.where(cand < 0, self.n_items, cand)
        ig = self._ig_pad[safe]
        blocks.append(ig)
        inum = self._inum_pad[safe]
        miss = ~np.isfinite(inum)
        filled = np.where(miss, self._item_numeric_mean, inum)
        blocks += [np.stack([filled[:, k], miss[:, k]], 1) for k in range(inum.shape[1])]
        history = req.history
        if len(history) > FEATURE_HISTORY:
            history = history[-FEATURE_HISTORY:]
        hpos = self.item_positions(history)
        n_hist = len(hpos)
        hpos = hpos[hpos >= 0]
        user_static = self.user_table.get(str(req.user_id))
        if user_static is None:
            user_static = np.zeros(self._n_user_static, np.float32)
        urow = np.r_[np.log1p(n_hist), user_static].astype(np.float32)
        blocks.append(np.broadcast_to(urow, (n, len(urow))))
        if self.uses("crosses"):
            blocks.append(self._crosses(hpos, cand, ig, inum))
        if self.uses("cooccurrence"):
            table = self.neighbours or ItemNeighbours.empty(self.n_items)
            blocks.append(
                cooccurrence_features(table, hpos, cand, recent=RECENT_ITEMS, n_ranked=nr)
            )
        if self.uses("popularity"):
            blocks.append(pop.astype(np.float32))
        dense = np.concatenate([np.asarray(b, np.float32).reshape(n, -1) for b in blocks], 1)
        if self.mean is not None:
            dense = (dense - self.mean) / self.std
        uidx = self._user_pos.get(str(req.user_id), 0) if self.uses("ids") else 0
        iidx = np.maximum(cand + 1, 0) if self.uses("ids") else np.zeros(n, np.int64)
        return dense.astype(np.float32), uidx, iidx

    def _crosses(
        self, hpos: np.ndarray, cand: np.ndarray, ig: np.ndarray, inum: np.ndarray
    ) -> np.ndarray:
        """User x item crosses the towers cannot express (no dot product does a max/min)."""
        n, g = ig.shape
        hg = self.item_genres[hpos]  # (h, G), oldest first
        share_all = _normalise(hg.sum(0))
        share_rec = _normalise(hg[-RECENT_ITEMS:].sum(0))
        n_genres = np.maximum(ig.sum(1), 1.0)
        aff_all = ig @ share_all / n_genres
        aff_rec = ig @ share_rec / n_genres
        max_share = (ig * share_all).max(1) if g else np.zeros(n)
        # Items since the user last engaged with each genre (0 = the latest item).
        h = len(hpos)
        since = np.full(g, np.inf)
        if h:
            has = hg.any(0)
            last = h - 1 - np.argmax(hg[::-1] > 0, axis=0)
            since[has] = (h - 1 - last)[has]
        masked = np.where(ig > 0, since[None, :], np.inf)
        item_since = masked.min(1) if g else np.full(n, np.inf)
        never = ~np.isfinite(item_since)
        log_since = np.log1p(np.where(never, h, item_since))
        cols = [aff_all, aff_rec, max_share, log_since, never.astype(np.float32)]
        for k in range(inum.shape[1]):
            hv = self.item_numeric[hpos, k]
            hv = hv[np.isfinite(hv)]
            cv = inum[:, k]
            gap = np.where(np.isfinite(cv), cv - hv.mean(), 0.0) if len(hv) else np.zeros(n)
            cols += [gap, np.abs(gap)]
        out = np.stack(cols, 1) if cols else np.zeros((n, 0))
        return np.concatenate([out, ig * share_all[None, :]], 1).astype(np.float32)

    def fit_standardisation(self, dense: np.ndarray) -> None:
        """Store column means/stds of raw training features (applied by `transform`)."""
        self.mean = dense.mean(0).astype(np.float32)
        std = dense.std(0)
        self.std = np.where(std < 1e-6, 1.0, std).astype(np.float32)

    # ---- persistence ----------------------------------------------------------------
    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-able metadata, arrays) for ranker.json / ranker.safetensors."""
        meta = {
            "item_ids": [str(i) for i in self.item_ids],
            "genres": self.genres,
            "item_numeric_names": self.item_numeric_names,
            "user_ids": self.user_ids,
            "user_numeric_names": self.user_numeric_names,
            "user_categorical": self.user_categorical,
            "user_table_ids": list(self.user_table),
            "windows_days": self.windows_days,
            "groups": self.groups,
            "feature_names": [n for n, _ in self.feature_names()],
        }
        arrays = {
            "fs.item_genres": self.item_genres,
            "fs.item_numeric": self.item_numeric,
            "fs.user_table": np.stack(list(self.user_table.values())).astype(np.float32)
            if self.user_table
            else np.zeros((0, self._n_user_static), np.float32),
        }
        if self.mean is not None:
            arrays["fs.mean"], arrays["fs.std"] = self.mean, self.std
        if self.neighbours is not None:
            arrays.update(self.neighbours.arrays("fs.neighbours"))
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> FeatureSpace:
        """The space `state()` returned. A group this code does not compute (one since removed)
        is refused: its columns would be missing and every later one shifted."""
        unknown = sorted(set(meta["groups"]) - set(GROUPS))
        if unknown:
            raise ValueError(f"ranker features use unsupported groups {unknown}: retrain it")
        table = arrays["fs.user_table"]
        return cls(
            item_ids=np.array(meta["item_ids"], dtype=object),
            genres=list(meta["genres"]),
            item_genres=arrays["fs.item_genres"],
            item_numeric_names=list(meta["item_numeric_names"]),
            item_numeric=arrays["fs.item_numeric"],
            user_ids=list(meta["user_ids"]),
            user_numeric_names=list(meta["user_numeric_names"]),
            user_categorical={k: list(v) for k, v in meta["user_categorical"].items()},
            user_table=dict(zip(meta["user_table_ids"], table, strict=True)),
            windows_days=list(meta["windows_days"]),
            groups=list(meta["groups"]),
            mean=arrays.get("fs.mean"),
            std=arrays.get("fs.std"),
            neighbours=ItemNeighbours.from_arrays(arrays, "fs.neighbours")
            if "fs.neighbours.indptr" in arrays
            else None,
        )


def _normalise(v: np.ndarray) -> np.ndarray:
    s = v.sum()
    return v / s if s > 0 else v


def _user_rows(users: pd.DataFrame, num: list[str], cat: dict[str, list[str]]) -> np.ndarray:
    """Static user features: per numeric column (standardised value, missing), one-hots."""
    cols = []
    for c in num:
        v = users[c].to_numpy(np.float64)
        miss = ~np.isfinite(v)
        mu = np.nanmean(v) if (~miss).any() else 0.0
        sd = np.nanstd(v) if (~miss).any() else 1.0
        cols += [np.where(miss, 0.0, (v - mu) / (sd or 1.0)), miss.astype(np.float64)]
    for c, vals in cat.items():
        s = users[c].astype(str).to_numpy(object)
        cols += [(s == v).astype(np.float64) for v in vals]
    if not cols:
        return np.zeros((len(users), 0), np.float32)
    return np.stack(cols, 1).astype(np.float32)
