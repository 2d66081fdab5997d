"""Featurising requests into the ranker's rows: each request's candidates as serving forms
them (the towers' top N plus what the extra sources of `shortlist.ranking.sources` add),
with point-in-time features from the `EventLog` as of the request.

Training adds sampled negatives: a sample of the retrieved candidates the user did not
take (hard negatives) and `random_negatives` uniformly drawn catalog items. Positives are
weighted by engagement (the rating), negatives by 1 (Covington et al. 2016). Positives
retrieval missed are not rows (the ranker never sees them at serving) but count in
`RankerRows.n_relevant`, so metrics over the rows measure the funnel, not the ranker alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from shortlist.ranking.candidates import Retrieval
from shortlist.ranking.event_log import EventLog, popularity_block
from shortlist.ranking.features import FEATURE_HISTORY, FeatureSpace, Request
from shortlist.ranking.requests import LabeledRequest
from shortlist.ranking.sources import CandidateSources

#: From this catalog size random negatives are drawn by rejection instead of from the
#: listed pool, whose construction costs O(catalog) per request (~0.6 s at 1M items).
REJECTION_MIN_ITEMS = 50_000


def sample_outside(rng: np.random.Generator, n_items: int, taken: np.ndarray, k: int) -> np.ndarray:
    """Up to k distinct item rows from [0, n_items) outside the sorted unique `taken`, each
    subset equally likely. Small catalogs draw from the listed pool (the stream every
    result so far was produced with); large ones draw and reject, in O(k) per request."""
    free = n_items - len(taken)
    k = min(k, free)
    if n_items < REJECTION_MIN_ITEMS or k > free // 2:
        pool = np.setdiff1d(np.arange(n_items), taken)
        return rng.choice(pool, size=k, replace=False)
    out = np.empty(0, dtype=np.int64)
    while len(out) < k:
        draw = rng.integers(0, n_items, size=2 * (k - len(out)) + 8)
        draw = draw[~np.isin(draw, taken)]
        # First occurrences, in draw order: sequential draws without replacement.
        merged = np.r_[out, draw]
        _, first = np.unique(merged, return_index=True)
        out = merged[np.sort(first)]
    return out[:k]


@dataclass
class RankerRows:
    """Feature rows of many requests; request r owns rows offsets[r]:offsets[r+1]."""

    dense: np.ndarray
    user_idx: np.ndarray
    item_idx: np.ndarray
    rows: np.ndarray  # catalog position of each row
    labels: np.ndarray
    weights: np.ndarray
    retrieval: np.ndarray  # retrieval score of each row
    retrieved: np.ndarray  # bool: row came from retrieval (not a random negative)
    offsets: np.ndarray
    n_relevant: np.ndarray  # positives per request in the catalog (retrieved or not)
    user_ids: list[str]

    def request(self, r: int) -> slice:
        return slice(int(self.offsets[r]), int(self.offsets[r + 1]))

    def __len__(self) -> int:
        return len(self.user_ids)

    def select(self, keep: np.ndarray) -> RankerRows:
        """The requests where `keep` (a mask over requests) is True, in order."""
        idx = np.flatnonzero(keep)
        lengths = np.diff(self.offsets)[idx]
        rows = (
            np.concatenate([np.arange(self.offsets[r], self.offsets[r + 1]) for r in idx])
            if len(idx)
            else np.zeros(0, np.int64)
        )
        return RankerRows(
            dense=self.dense[rows],
            user_idx=self.user_idx[rows],
            item_idx=self.item_idx[rows],
            rows=self.rows[rows],
            labels=self.labels[rows],
            weights=self.weights[rows],
            retrieval=self.retrieval[rows],
            retrieved=self.retrieved[rows],
            offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
            n_relevant=self.n_relevant[idx],
            user_ids=[self.user_ids[r] for r in idx],
        )

    def standardise(self, space: FeatureSpace) -> None:
        """Standardise the dense features in place with `space`'s fitted statistics (rows
        featurised before `space.fit_standardisation` are raw)."""
        dense = self.dense.astype(np.float32, copy=False)
        if not dense.flags.writeable:
            dense = dense.copy()
        # In place, in float32 as `(dense - mean) / std` would be: no full-size temporaries.
        np.subtract(dense, space.mean, out=dense)
        np.divide(dense, space.std, out=dense)
        self.dense = dense


def featurize(
    space: FeatureSpace,
    log: EventLog,
    retrieval: Retrieval,
    requests: Sequence[LabeledRequest],
    *,
    n_candidates: int,
    random_negatives: int = 0,
    hard_negatives: int = 0,
    seed: int = 0,
    progress: bool = False,
    sources: CandidateSources | None = None,
) -> RankerRows:
    """Candidates and point-in-time features for each request (raw or standardised, as
    `space` is fitted). Every time-dependent input comes from `log` as of the request.

    Candidates are the towers' top `n_candidates` then, with `sources`, what the extra
    sources add (`shortlist.ranking.sources`), each scored by the towers as well."""
    rng = np.random.default_rng(seed)
    hists = [log.user_history(r.user_id, r.timestamp)[0] for r in requests]
    queries = retrieval.embed_queries(
        [r.user_id for r in requests], hists, [r.timestamp for r in requests]
    )
    index = space.item_index()
    excl = []
    for r, h in zip(requests, hists, strict=True):
        hp = np.array([index.get(str(i), -1) for i in h], dtype=np.int64)
        excl.append(np.union1d(r.exclude, hp[hp >= 0]))
    cands = retrieval.top_n(queries, n_candidates, excl)
    if sources is not None and sources.active:
        widened = []
        for (rows, scores), h, ex, q in zip(cands, hists, excl, queries, strict=True):
            hp = space.item_positions(list(h)[-FEATURE_HISTORY:])
            more = sources.extra(hp[hp >= 0], rows, ex)
            widened.append(
                (np.r_[rows, more].astype(np.int64), np.r_[scores, retrieval.score_rows(q, more)])
            )
        cands = widened
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("d", "u", "i", "rows", "y", "w", "s", "ret")
    }
    offsets = [0]
    n_rel = []
    it = zip(requests, hists, cands, excl, queries, strict=True)
    for req, hist, (rows, scores), ex, q in tqdm(
        it, total=len(requests), desc="ranker features", disable=not progress
    ):
        if hard_negatives and len(rows) > hard_negatives:
            # Training rows: every retrieved positive plus a sample of the retrieved
            # negatives (order kept, so ranks stay those of the full candidate list).
            is_pos = np.isin(rows, np.fromiter(req.positives, np.int64))
            neg = np.flatnonzero(~is_pos)
            pick = rng.choice(neg, size=min(hard_negatives, len(neg)), replace=False)
            keep = np.sort(np.r_[np.flatnonzero(is_pos), pick])
            full_scores = scores
            rows, scores = rows[keep], scores[keep]
        else:
            full_scores = scores
        n_ret = len(rows)
        if random_negatives:
            taken = np.union1d(np.union1d(rows, ex), np.fromiter(req.positives, np.int64))
            neg = sample_outside(rng, space.n_items, taken, random_negatives)
            rows = np.r_[rows, np.sort(neg)].astype(np.int64)
            scores = np.r_[scores, retrieval.score_rows(q, np.sort(neg))].astype(np.float32)
        fr = Request(req.user_id, req.timestamp, list(hist), rows, scores, n_retrieved=n_ret)
        fr.reference_scores = full_scores
        pop = None
        if space.uses("popularity"):
            pop = popularity_block(log, rows, log.asof(req.timestamp), space.windows_days)
        dense, uidx, iidx = space.transform(fr, pop)
        y = np.isin(rows, np.fromiter(req.positives, np.int64)).astype(np.float32)
        w = np.array([req.positives.get(int(i), 1.0) for i in rows], np.float32)
        w = np.where(y > 0, w, 1.0).astype(np.float32)
        for k, v in zip(
            ("d", "u", "i", "rows", "y", "w", "s", "ret"),
            (
                dense,
                np.full(len(rows), uidx),
                iidx,
                rows,
                y,
                w,
                scores,
                np.arange(len(rows)) < n_ret,
            ),
            strict=True,
        ):
            parts[k].append(np.asarray(v))
        offsets.append(offsets[-1] + len(rows))
        n_rel.append(len(set(req.positives) - set(ex.tolist())))
    cat = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in parts.items()}
    return RankerRows(
        dense=cat["d"].reshape(len(cat["y"]), -1).astype(np.float32, copy=False)
        if len(cat["y"])
        else np.zeros((0, space.n_dense), np.float32),
        user_idx=cat["u"].astype(np.int64),
        item_idx=cat["i"].astype(np.int64),
        rows=cat["rows"].astype(np.int64),
        labels=cat["y"].astype(np.float32),
        weights=cat["w"].astype(np.float32),
        retrieval=cat["s"].astype(np.float32),
        retrieved=cat["ret"].astype(bool),
        offsets=np.asarray(offsets, np.int64),
        n_relevant=np.asarray(n_rel, np.int64),
        user_ids=[r.user_id for r in requests],
    )
