"""The two-stage funnel offline: retrieve top-N, rerank with the ranker, score the catalog.

Used by the funnel benchmark and by `export-recs --stage funnel`. Requests go through the
same `featurize` path the ranker was trained with (candidates from the index, features as
of the request time from an `EventLog`), so offline numbers measure what serving does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from shortlist.data import schema
from shortlist.ranking.candidates import Retrieval
from shortlist.ranking.event_log import EventLog
from shortlist.ranking.features import FEATURE_HISTORY
from shortlist.ranking.featurize import RankerRows, featurize
from shortlist.ranking.fit import predict
from shortlist.ranking.ranker import Ranker
from shortlist.ranking.requests import LabeledRequest
from shortlist.ranking.sources import catalog_maps, extra_columns


def requests_at(
    user_ids: Sequence[str],
    timestamps: Sequence[int],
    seen: pd.DataFrame,
    item_index: dict[str, int],
    positives: pd.DataFrame | None = None,
) -> list[LabeledRequest]:
    """One request per user at the given time; `seen` items are never candidates."""
    seen = seen[seen[schema.USER_ID].astype(str).isin(list(dict.fromkeys(map(str, user_ids))))]
    ex = (
        seen.assign(
            u=seen[schema.USER_ID].astype(str),
            pos=seen[schema.ITEM_ID].astype(str).map(item_index),
        )
        .dropna(subset=["pos"])
        .groupby("u")["pos"]
        .apply(lambda s: np.unique(s.to_numpy(np.int64)))
        .to_dict()
    )
    pos: dict[str, dict[int, float]] = {}
    if positives is not None and len(positives):
        p = positives.assign(
            u=positives[schema.USER_ID].astype(str),
            pos=positives[schema.ITEM_ID].astype(str).map(item_index),
        ).dropna(subset=["pos"])
        for u, g in p.groupby("u"):
            pos[str(u)] = {
                int(k): float(w) for k, w in zip(g["pos"], g[schema.WEIGHT], strict=True)
            }
    return [
        LabeledRequest(str(u), int(t), pos.get(str(u), {}), ex.get(str(u), np.array([], np.int64)))
        for u, t in zip(user_ids, timestamps, strict=True)
    ]


def rerank(
    ranker: Ranker,
    retrieval: Retrieval,
    log: EventLog,
    requests: Sequence[LabeledRequest],
    n_candidates: int,
    *,
    progress: bool = False,
) -> tuple[RankerRows, np.ndarray]:
    """(candidate examples, ranker scores per row) for each request."""
    ex = featurize(
        ranker.space,
        log,
        retrieval,
        requests,
        n_candidates=n_candidates,
        progress=progress,
        sources=ranker.candidate_sources(),
    )
    return ex, predict(ranker.model, ex)


def catalog_scores(ex: RankerRows, row_scores: np.ndarray, n_items: int) -> np.ndarray:
    """(requests, n_items) float32: each request's candidate scores, -inf elsewhere."""
    out = np.full((len(ex), n_items), -np.inf, np.float32)
    for r in range(len(ex)):
        sl = ex.request(r)
        out[r, ex.rows[sl]] = row_scores[sl]
    return out


class FixedScores:
    """A `Recommender` over precomputed per-user catalog scores (for the eval harness)."""

    def __init__(
        self, name: str, item_ids: Sequence[str], user_ids: Sequence[str], scores: np.ndarray
    ):
        self.name = name
        self.item_ids = np.asarray([str(i) for i in item_ids])
        self._row = {str(u): k for k, u in enumerate(user_ids)}
        self._scores = scores

    def fit(self, *args, **kwargs) -> FixedScores:
        return self

    def score(self, user_ids: Sequence[str]) -> np.ndarray:
        out = np.full((len(user_ids), len(self.item_ids)), -np.inf, np.float32)
        for k, u in enumerate(user_ids):
            r = self._row.get(str(u))
            if r is not None:
                out[k] = self._scores[r]
        return out


def rerank_matrix(
    ranker: Ranker,
    user_ids: Sequence[str],
    histories: Sequence[Sequence[str]],
    scores: np.ndarray,
    item_ids: Sequence[str],
    timestamps: Sequence[float] | None,
    n_candidates: int,
) -> np.ndarray:
    """Serving-path rerank of a retrieval score matrix (users x catalog, -inf = excluded).

    Each row's top-N finite items, then what the ranker's extra candidate sources add
    (`shortlist.ranking.sources`), are scored by `ranker.score` with their retrieval
    scores; everything else becomes -inf, so a top-K of the result is the funnel's answer.
    """
    item_ids = np.asarray(item_ids, dtype=object)
    out = np.full(scores.shape, -np.inf, np.float32)
    k = min(n_candidates, scores.shape[1])
    sources = ranker.candidate_sources()
    if sources.active:
        pos_of_col, col_of_pos = catalog_maps(ranker.space.item_ids, item_ids)
    for r, u in enumerate(user_ids):
        row = scores[r]
        top = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
        top = top[np.isfinite(row[top])]
        if not len(top):
            continue
        top = top[np.argsort(-row[top], kind="stable")]
        if sources.active:
            hist = ranker.space.item_positions(list(histories[r])[-FEATURE_HISTORY:])
            more = extra_columns(
                sources,
                hist[hist >= 0],
                top,
                np.flatnonzero(~np.isfinite(row)),
                pos_of_col,
                col_of_pos,
            )
            top = np.r_[top, more]
        ts = None if timestamps is None else timestamps[r]
        ctx = {"retrieval_scores": row[top].astype(np.float32)}
        if ts is not None and np.isfinite(ts):
            ctx["timestamp"] = int(ts)
        out[r, top] = ranker.score(str(u), list(histories[r]), list(item_ids[top]), ctx)
    return out
