"""The evaluation harness: one full-ranking protocol for every recommender.

`evaluate` asks the model for scores over the whole catalog (never sampled negatives),
sets each user's train items to -inf, takes the top K and computes the metrics of
`shortlist.eval.metrics` per segment:

- ``all``: every test user with at least one held-out item in the catalog;
- ``cold_users``: users with no train interaction;
- ``light_users`` / ``heavy_users``: train interaction count at most / above the
  `heavy_user_quantile` of per-user train counts;
- ``cold_items``: held-out interactions on items with no train interaction, ranked among
  the cold items only (can content find the right new item among the new ones?);
- ``cold_items_in_catalog``: the same held-out cold items, ranked over the full catalog.

Users are scored in blocks of at most `block_cells` score cells (users x catalog), and
only each user's top K and per-user metrics leave a block, so memory stays bounded at any
catalog size (no dense users x items matrix is ever formed). A seeded sample of users
(`sample_users`) can stand for all of them where full ranking of everyone is too slow; the
result states it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from shortlist.data import schema
from shortlist.eval import metrics as M
from shortlist.eval.protocol import Recommender

USER_SEGMENTS = ("all", "cold_users", "light_users", "heavy_users")
ITEM_SEGMENTS = ("cold_items", "cold_items_in_catalog")
SEGMENTS = USER_SEGMENTS + ITEM_SEGMENTS
#: Score cells per block (users x catalog) by default; bounds the harness's memory.
BATCH_CELLS = 20_000_000
#: Most users per block, however small the catalog.
MAX_BLOCK_USERS = 4096


def block_size(n_items: int, batch_users: int | None = None, block_cells: int | None = None) -> int:
    """Users per scoring block: at most `batch_users` (default MAX_BLOCK_USERS), and no
    more than `block_cells` score cells (default BATCH_CELLS) over an `n_items` catalog."""
    cap = max(1, int(block_cells or BATCH_CELLS) // max(int(n_items), 1))
    return max(1, min(int(batch_users or MAX_BLOCK_USERS), cap))


def evaluate(
    recommender: Recommender,
    train: pd.DataFrame,
    test: pd.DataFrame,
    items: pd.DataFrame | None = None,
    *,
    ks: Sequence[int] = (10, 20, 50, 200),
    catalog: Sequence[str] | None = None,
    cold_items: Iterable[str] | None = None,
    heavy_user_quantile: float = 0.8,
    segments: Sequence[str] = SEGMENTS,
    batch_users: int | None = None,
    block_cells: int | None = None,
    sample_users: int | None = None,
    max_cells: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Full-ranking metrics of `recommender` on `test`, per segment.

    `train` holds every interaction the model may have seen: those (user, item) pairs are
    excluded from the ranking, and they define item popularity, cold users and the
    light/heavy threshold. `catalog` (default: the model's `item_ids`) is the set of items
    ranked; items the model does not score get -inf, test items outside it are dropped
    (counted in `dropped_test_interactions`). `cold_items` defaults to catalog items with
    no train interaction. `items` is accepted for symmetry with `fit` and unused.

    Users are scored in blocks of `block_size(catalog, batch_users, block_cells)`; the
    result does not depend on the block size. `sample_users` evaluates a uniform sample of
    that many test users (seeded by `seed`), recorded under `user_sample`; `max_cells` caps
    users x catalog the same way (at 1M items full ranking scores ~3e7 cells/s). A recommender's
    `notes` (e.g. a baseline fitted on part of the catalog) are copied into the result.
    """
    del items
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] <= 0:
        raise ValueError(f"ks must be positive, got {ks}")
    unknown = set(segments) - set(SEGMENTS)
    if unknown:
        raise ValueError(f"unknown segments {sorted(unknown)}; known: {SEGMENTS}")
    model_items = np.asarray(recommender.item_ids).astype(str)
    cat = model_items if catalog is None else np.asarray(list(catalog)).astype(str)
    if len(set(cat)) != len(cat):
        raise ValueError("catalog item ids must be unique")
    n_cat = len(cat)
    col_of = pd.Index(cat)

    train_u = train[schema.USER_ID].astype(str).to_numpy()
    train_i = col_of.get_indexer(train[schema.ITEM_ID].astype(str).to_numpy())
    test_u = test[schema.USER_ID].astype(str).to_numpy()
    test_i = col_of.get_indexer(test[schema.ITEM_ID].astype(str).to_numpy())
    dropped = int((test_i < 0).sum())
    test_u, test_i = test_u[test_i >= 0], test_i[test_i >= 0]
    users = np.unique(test_u)
    users_total = len(users)
    if max_cells:
        sample_users = min(sample_users or users_total, max(1, max_cells // max(n_cat, 1)))
    if sample_users and sample_users < len(users):
        rng = np.random.default_rng(seed)
        users = np.sort(rng.choice(users, int(sample_users), replace=False))
        keep = pd.Index(users).get_indexer(test_u) >= 0  # hashed: np.isin loops over users
        test_u, test_i = test_u[keep], test_i[keep]
    row_of = pd.Index(users)

    relevant = _csr(row_of.get_indexer(test_u), test_i, len(users), n_cat)
    known = train_i >= 0
    seen_rows = row_of.get_indexer(train_u[known])
    in_eval = seen_rows >= 0
    seen = _csr(seen_rows[in_eval], train_i[known][in_eval], len(users), n_cat)

    pop = np.bincount(train_i[known], minlength=n_cat).astype(np.float64)
    pop_pct = M.popularity_percentile(pop)
    cold_mask = (
        pop == 0
        if cold_items is None
        else pd.Series(cat).isin(np.asarray(list(cold_items), str)).to_numpy()
    )
    cold_cols = np.flatnonzero(cold_mask)

    per_user_train = pd.Series(train_u).value_counts()
    threshold = (
        float(np.quantile(per_user_train.to_numpy(), heavy_user_quantile))
        if len(per_user_train)
        else 0.0
    )
    n_train = per_user_train.reindex(users).fillna(0).to_numpy()
    user_masks = {
        "all": np.ones(len(users), bool),
        "cold_users": n_train == 0,
        "light_users": (n_train > 0) & (n_train <= threshold),
        "heavy_users": n_train > threshold,
    }
    n_cold_rel = (
        np.asarray(relevant[:, cold_cols].sum(axis=1)).ravel()
        if len(cold_cols)
        else (np.zeros(len(users)))
    )
    item_users = n_cold_rel > 0

    kmax = ks[-1]
    acc = {s: _Acc(ks, n_cat, pop_pct) for s in SEGMENTS if s in segments}
    batch = block_size(n_cat, batch_users, block_cells)
    src = col_of.get_indexer(model_items)
    same_order = len(model_items) == n_cat and np.array_equal(model_items, cat)
    cold_in_cat = np.zeros(n_cat, bool)
    cold_in_cat[cold_cols] = True

    starts = range(0, len(users), batch)
    for start in tqdm(starts, desc=f"evaluate {recommender.name}", disable=not progress):
        rows = np.arange(start, min(start + batch, len(users)))
        raw = np.asarray(recommender.score(list(users[rows])))
        if raw.shape != (len(rows), len(model_items)):
            raise ValueError(
                f"{recommender.name}.score returned {raw.shape}, "
                f"expected {(len(rows), len(model_items))}"
            )
        if np.isnan(raw).any():
            raise ValueError(f"{recommender.name}.score returned NaN")
        if same_order:
            scores = np.array(raw, dtype=np.float32, copy=True)
        else:
            scores = np.full((len(rows), n_cat), -np.inf, np.float32)
            ok = src >= 0
            scores[:, src[ok]] = raw[:, ok]
        s = seen[rows]
        scores[np.repeat(np.arange(len(rows)), np.diff(s.indptr)), s.indices] = -np.inf
        rel = relevant[rows].toarray().astype(bool)

        idx, valid = M.top_k(scores, kmax)
        hits = np.take_along_axis(rel, idx, axis=1) & valid
        per_user = M.ranking_metrics(hits, rel.sum(axis=1), ks)
        per_user["mrr"] = M.reciprocal_rank(scores, rel)
        for name in USER_SEGMENTS:
            if name in acc:
                m = user_masks[name][rows]
                acc[name].add(per_user, m, idx, valid)

        sel = item_users[rows]
        if not sel.any():
            continue
        rel_cold = rel[sel] & cold_in_cat
        if "cold_items_in_catalog" in acc:
            hits_c = np.take_along_axis(rel_cold, idx[sel], axis=1) & valid[sel]
            pu = M.ranking_metrics(hits_c, rel_cold.sum(axis=1), ks)
            pu["mrr"] = M.reciprocal_rank(scores[sel], rel_cold)
            acc["cold_items_in_catalog"].add(pu, None, idx[sel], valid[sel])
        if "cold_items" in acc:
            sc = scores[sel][:, cold_cols]
            rc = rel_cold[:, cold_cols]
            idx_c, valid_c = M.top_k(sc, kmax)
            hits_c = np.take_along_axis(rc, idx_c, axis=1) & valid_c
            pu = M.ranking_metrics(hits_c, rc.sum(axis=1), ks)
            pu["mrr"] = M.reciprocal_rank(sc, rc)
            acc["cold_items"].add(pu, None, cold_cols[idx_c], valid_c)

    result_segments = {}
    for name, a in acc.items():
        size = len(cold_cols) if name == "cold_items" else n_cat
        result_segments[name] = a.summary(size)
    out = {
        "model": recommender.name,
        "catalog_size": n_cat,
        "cold_items": len(cold_cols),
        "ks": ks,
        "users": len(users),
        "test_interactions": int(relevant.nnz),
        "dropped_test_interactions": dropped,
        "heavy_user_threshold": threshold,
        "segments": result_segments,
        "block_users": batch,
        "blocks": len(starts),
    }
    if len(users) < users_total:
        out["user_sample"] = {"users": len(users), "of": users_total, "seed": seed}
    notes = list(getattr(recommender, "notes", []) or [])
    if notes:
        out["notes"] = notes
    return out


def _csr(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> sp.csr_matrix:
    m = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, cols)), shape=(n_rows, n_cols), dtype=np.float32
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


class _Acc:
    """Running sums of per-user metrics and recommendation counts for one segment."""

    def __init__(self, ks: Sequence[int], n_items: int, pop_pct: np.ndarray):
        self.ks = list(ks)
        self.pop_pct = pop_pct
        self.n = 0
        self.sums: dict[str, float] = {}
        self.recommended = {k: np.zeros(n_items, np.int64) for k in self.ks}

    def add(self, per_user, mask, idx, valid) -> None:
        if mask is not None:
            if not mask.any():
                return
            per_user = {k: v[mask] for k, v in per_user.items()}
            idx, valid = idx[mask], valid[mask]
        self.n += len(idx)
        for key, values in per_user.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(values.sum())
        for k in self.ks:
            chosen = idx[:, :k][valid[:, :k]]
            self.recommended[k] += np.bincount(chosen, minlength=len(self.recommended[k]))

    def summary(self, catalog_size: int) -> dict[str, Any]:
        out: dict[str, Any] = {"users": self.n}
        if self.n == 0:
            return out
        out.update({key: total / self.n for key, total in self.sums.items()})
        for k in self.ks:
            counts = self.recommended[k]
            out[f"coverage@{k}"] = float((counts > 0).sum() / max(catalog_size, 1))
            slots = counts.sum()
            out[f"popularity_percentile@{k}"] = (
                float((counts * self.pop_pct).sum() / slots) if slots else float("nan")
            )
        return out


def flatten(result: dict[str, Any], segments: Sequence[str] | None = None) -> dict[str, float]:
    """`{"segment/metric": value}` for logging (e.g. ``all/recall@20``)."""
    flat = {}
    for seg, values in result["segments"].items():
        if segments is not None and seg not in segments:
            continue
        for key, value in values.items():
            flat[f"{seg}/{key}"] = float(value)
    return flat


def holdout_last(
    interactions: pd.DataFrame, fraction: float, min_interactions: int = 5
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per user, the last floor(fraction * n) interactions by (timestamp, item_id) held out.

    Users with fewer than `min_interactions` keep everything in the first part. Item ids
    break timestamp ties as numbers when every id is an integer (MovieLens), else as
    strings. This is the ml-100k benchmark protocol (floor, not round, and numeric ties:
    both reproduce the reference numbers quoted for it; ml-100k has many same-second
    ratings); the product's own split is `shortlist.data.split`.
    """
    df = interactions.reset_index(drop=True)
    ids = df[schema.ITEM_ID].astype(str)
    numeric = pd.to_numeric(ids, errors="coerce")
    item_key = numeric.to_numpy() if numeric.notna().all() else ids.to_numpy()
    order = np.lexsort(
        (item_key, df[schema.TIMESTAMP].to_numpy(), df[schema.USER_ID].astype(str).to_numpy())
    )
    df = df.iloc[order].reset_index(drop=True)
    users = df[schema.USER_ID].astype(str)
    n = users.map(users.value_counts()).to_numpy()
    pos = df.groupby(users, sort=False).cumcount().to_numpy()
    held = (n >= min_interactions) & (pos >= n - np.floor(fraction * n).astype(np.int64))
    return df[~held].reset_index(drop=True), df[held].reset_index(drop=True)
