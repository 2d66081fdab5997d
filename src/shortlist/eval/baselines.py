"""The baselines every retrieval model must beat, in the same harness.

MostPopular, ItemKNN (cosine with shrinkage), EASE (closed form, Steck 2019) and implicit
ALS (the `implicit` package). Each treats every interaction as a binary positive, tunes
its small grid on the validation split (primary metric of the harness, full ranking,
train items excluded), then refits on train + validation with the chosen values, because
the test period follows the validation period. Users without history get the popularity
ranking. Their catalog (`item_ids`) is the items seen in the data they were fitted on:
they cannot score items without interactions, and the harness gives those -inf.

At a large catalog none of them holds an items x items or users x items dense matrix:
ItemKNN builds its similarity sparsely in column blocks of bounded size, and EASE, dense
by nature, is fitted on the `max_items` most popular items only, which its `notes` (and so
the harness's result) state. Tuning may evaluate a seeded sample of validation users
(`tune_sample_users`, `tune_max_cells`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from shortlist.config import EvaluationParams, Params
from shortlist.data import schema

#: Largest catalog EASE inverts densely (n_items^2 float64) unless configured otherwise.
EASE_MAX_ITEMS = EvaluationParams().ease_max_items


class _Baseline:
    """Interaction matrix bookkeeping, tuning and the popularity fallback."""

    name = "baseline"

    def __init__(
        self,
        grid: dict[str, Sequence[Any]] | None = None,
        *,
        tune_metric: str = "recall@20",
        refit_on_validation: bool = True,
        seed: int = 0,
        threads: int = 1,
        tune_sample_users: int = 0,
        tune_max_cells: int = 0,
        tune_max_interactions: int = 0,
    ):
        self.grid = {k: list(v) for k, v in (grid or {}).items()}
        self.tune_metric = tune_metric
        self.refit_on_validation = refit_on_validation
        self.seed = seed
        self.threads = threads
        self.tune_sample_users = tune_sample_users
        self.tune_max_cells = tune_max_cells
        self.tune_max_interactions = tune_max_interactions
        self.notes: list[str] = []  # what a reader of its results must know (e.g. a sample)
        self.best_params: dict[str, Any] = {k: v[0] for k, v in self.grid.items()}
        self.tuning: list[dict[str, Any]] = []
        self.item_ids = np.array([], dtype=str)

    # -- the Recommender protocol -------------------------------------------------------

    def fit(
        self,
        train: pd.DataFrame,
        validation: pd.DataFrame,
        items: pd.DataFrame | None = None,
        users: pd.DataFrame | None = None,
    ) -> _Baseline:
        """Tune on (train -> validation) over the grid, then refit with the best values."""
        from shortlist.eval.harness import evaluate

        combos = [dict(zip(self.grid, vals, strict=True)) for vals in _product(self.grid)]
        self.tuning = []
        self._tuning_note = ""
        if len(combos) > 1 and len(validation):
            segment, metric = "all", self.tune_metric
            k = int(metric.split("@")[1]) if "@" in metric else 20
            best = -np.inf
            tune_train, tune_val = self._tuning_sample(train, validation)
            for combo in combos:
                self._fit_matrix(tune_train, combo)
                res = evaluate(
                    self,
                    tune_train,
                    tune_val,
                    ks=[k],
                    segments=["all"],
                    sample_users=self.tune_sample_users or None,
                    max_cells=self.tune_max_cells or None,
                    seed=self.seed,
                )
                value = float(res["segments"][segment].get(metric, 0.0))
                self.tuning.append({**combo, metric: value})
                if value > best:
                    best, self.best_params = value, combo
        elif combos:
            self.best_params = combos[0]
        full = train
        if self.refit_on_validation and len(validation):
            full = pd.concat([train, validation], ignore_index=True)
        self._fit_matrix(full, self.best_params)
        if self._tuning_note:
            self.notes.append(self._tuning_note)
        return self

    def _tuning_sample(
        self, train: pd.DataFrame, validation: pd.DataFrame
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Train and validation of a seeded sample of users holding at most
        `tune_max_interactions` train interactions (all users when 0 or when under it):
        each grid point is then a fit on that sample, the refit stays on everything."""
        cap = self.tune_max_interactions
        if not cap or len(train) <= cap:
            return train, validation
        counts = train[schema.USER_ID].astype(str).value_counts()
        order = np.random.default_rng(self.seed).permutation(len(counts))
        kept = counts.index[order][np.cumsum(counts.to_numpy()[order]) <= cap]
        tune_train = train[train[schema.USER_ID].astype(str).isin(kept)]
        tune_val = validation[validation[schema.USER_ID].astype(str).isin(kept)]
        self._tuning_note = (
            f"grid searched on a seeded sample of {len(kept):,} of {len(counts):,} users "
            f"({len(tune_train):,} of {len(train):,} train interactions; "
            "evaluation.tune_max_interactions), refitted on all"
        )
        return tune_train, tune_val

    def score(self, user_ids: Sequence[str]) -> np.ndarray:
        rows = self._user_index.get_indexer(pd.Index([str(u) for u in user_ids]))
        out = np.empty((len(rows), len(self.item_ids)), np.float32)
        known = rows >= 0
        if known.any():
            out[known] = self._score_rows(rows[known])
        out[~known] = self._popularity
        return out

    # -- shared helpers -------------------------------------------------------------------

    def _fit_matrix(self, interactions: pd.DataFrame, params: dict[str, Any]) -> None:
        u = interactions[schema.USER_ID].astype(str).to_numpy()
        i = interactions[schema.ITEM_ID].astype(str).to_numpy()
        # Sorted distinct ids and each row's position among them (np.unique's result), by
        # hashing: sorting millions of id strings took ~1 min a fit at 10M interactions.
        user_rows, user_ids = pd.factorize(u, sort=True)
        item_cols, self.item_ids = pd.factorize(i, sort=True)
        self._user_index = pd.Index(user_ids)
        x = sp.csr_matrix(
            (np.ones(len(u), np.float32), (user_rows, item_cols)),
            shape=(len(self._user_index), len(self.item_ids)),
        )
        x.sum_duplicates()
        x.data[:] = 1.0
        self._x = x
        pop = np.asarray(x.sum(axis=0)).ravel()
        self._popularity = (pop / max(pop.max(), 1.0)).astype(np.float32)
        self.notes = []
        self._fit(x, params)

    def _fit(self, x: sp.csr_matrix, params: dict[str, Any]) -> None:
        raise NotImplementedError

    def _score_rows(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _with_fallback(self, rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Rows whose user has no history in the matrix fall back to popularity."""
        empty = np.diff(self._x.indptr)[rows] == 0
        if empty.any():
            scores[empty] = self._popularity
        return scores


def _product(grid: dict[str, list[Any]]):
    return itertools.product(*grid.values()) if grid else iter([()])


class MostPopular(_Baseline):
    """Everyone gets the items with the most train interactions."""

    name = "most_popular"

    def _fit(self, x, params) -> None:
        pass

    def _score_rows(self, rows):
        return np.broadcast_to(self._popularity, (len(rows), len(self.item_ids))).copy()


class ItemKNN(_Baseline):
    """Item-item cosine similarity with shrinkage, top-`neighbours` per item.

    sim(i, j) = |U_i & U_j| / (sqrt(|U_i| |U_j|) + shrink); score(u, j) = sum over the
    user's items i of sim(i, j), keeping for each j only its `neighbours` most similar i
    (ties: the lower item index). Co-occurrences stay sparse, computed for blocks of
    columns holding at most `block_pairs` co-occurring pairs, so memory does not grow
    with the catalog squared.
    """

    name = "item_knn"
    block_pairs = 20_000_000

    def _fit(self, x, params) -> None:
        k, shrink = int(params["neighbours"]), float(params["shrink"])
        xt = x.T.tocsr()
        xc = x.tocsc()
        counts = np.asarray(x.sum(axis=0)).ravel()
        norms = np.sqrt(counts)
        n = x.shape[1]
        kk = min(k, n - 1)
        # Upper bound of each column's co-occurrence entries: its users' history lengths.
        row_len = np.diff(x.indptr).astype(np.float64)
        cum = np.cumsum(np.asarray(xt @ row_len).ravel())
        rows, cols, vals = [], [], []
        start = 0
        while start < n and kk > 0:
            done = cum[start - 1] if start else 0.0
            fits = int(np.searchsorted(cum, done + self.block_pairs, side="right"))
            end = min(n, max(fits, start + 1))
            cols_b = np.arange(start, end)
            co = (xt @ xc[:, cols_b]).tocsc()  # (n_items, block), sparse
            co.sort_indices()
            r = co.indices.astype(np.int64)
            c = np.repeat(cols_b, np.diff(co.indptr))
            sim = co.data / (norms[r] * norms[c] + shrink + 1e-12)
            keep = (r != c) & (sim > 0)
            r, c, sim = r[keep], c[keep], sim[keep]
            # Best kk per column: order by (column, -sim, row), keep the first kk of each.
            order = _column_rank_order(c, sim, r, n)
            r, c, sim = r[order], c[order], sim[order]
            first = np.searchsorted(c, cols_b)
            rank = np.arange(len(c)) - first[c - start]
            top = rank < kk
            rows.append(r[top])
            cols.append(c[top])
            vals.append(sim[top])
            start = end
        cat = np.concatenate if rows else (lambda _: np.array([], np.int64))
        self._sim = sp.csr_matrix(
            (cat(vals).astype(np.float32), (cat(rows), cat(cols))), shape=(n, n)
        )

    def _score_rows(self, rows):
        scores = np.asarray((self._x[rows] @ self._sim).todense(), dtype=np.float32)
        return self._with_fallback(rows, scores)


def _column_rank_order(c: np.ndarray, sim: np.ndarray, r: np.ndarray, n: int) -> np.ndarray:
    """The permutation sorting entries by (column c, descending sim, row r).

    One int64 key per entry (column, sim quantised below float32 precision, row) sorts
    several times faster than a three-key lexsort; catalogs too large for the bits left
    fall back to the lexsort. Keys are unique, so the order is fully determined.
    """
    nb = max(1, int(n - 1).bit_length())
    qbits = 63 - 2 * nb
    if qbits < 24:
        return np.lexsort((r, -sim, c))
    q = np.clip((1.0 - sim) * float(1 << qbits), 0, (1 << qbits) - 1).astype(np.int64)
    return np.argsort((c.astype(np.int64) << (qbits + nb)) | (q << nb) | r)


class EASE(_Baseline):
    """Embarrassingly Shallow Autoencoder, closed form (Steck, WWW 2019).

    P = (X^T X + lambda I)^-1, B = I - P diag(1 / diag(P)) (zero diagonal);
    score(u) = x_u B. Dense in n_items: above `max_items` items it is fitted on the
    `max_items` most popular ones (the others get no score, -inf in the harness), and
    `notes` says so.
    """

    name = "ease"

    def __init__(self, *args, max_items: int = EASE_MAX_ITEMS, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_items = int(max_items)

    def _fit(self, x, params) -> None:
        n = x.shape[1]
        if n > self.max_items:
            counts = np.asarray(x.sum(axis=0)).ravel()
            keep = np.sort(np.argsort(-counts, kind="stable")[: self.max_items])
            x = x[:, keep].tocsr()
            self._x = x
            self.item_ids = self.item_ids[keep]
            self._popularity = self._popularity[keep]
            share = counts[keep].sum() / max(counts.sum(), 1)
            self.notes = [
                f"EASE fitted on the {self.max_items:,} most popular of {n:,} items "
                f"({share:.1%} of the interactions; evaluation.ease_max_items): it is dense "
                "in items, and the other items get no score"
            ]
            n = self.max_items
        from scipy.linalg import lapack

        g = (x.T @ x).toarray().astype(np.float64)
        g[np.diag_indices(n)] += float(params["lambda"])
        # G + lambda*I is symmetric positive definite: a Cholesky inverse (potrf + potri,
        # ~n^3 flops) costs half of a general LU inverse (~2n^3).
        c, info = lapack.dpotrf(g, lower=False, overwrite_a=True, clean=True)
        if info == 0:
            c, info = lapack.dpotri(c, lower=False, overwrite_c=True)
        if info != 0:
            raise np.linalg.LinAlgError(f"EASE: Cholesky inverse failed (LAPACK info {info})")
        del g
        p = np.triu(c)
        p += np.triu(c, 1).T  # potri fills the upper triangle only
        del c
        p /= -np.diag(p)[None, :]  # B = -P / diag(P), in place: one n x n float64 at a time
        p[np.diag_indices(n)] = 0.0
        self._b = p.astype(np.float32)

    def _score_rows(self, rows):
        scores = np.asarray(self._x[rows] @ self._b, dtype=np.float32)
        return self._with_fallback(rows, scores)


class ALS(_Baseline):
    """Implicit-feedback matrix factorisation (Hu, Koren, Volinsky 2008) via `implicit`.

    Confidence 1 + alpha * x on the binary matrix; score = user factors . item factors.
    """

    name = "als"

    def _fit(self, x, params) -> None:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        # implicit parallelises itself; a threaded BLAS underneath only oversubscribes.
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=int(params["factors"]),
                regularization=float(params["regularization"]),
                alpha=float(params["alpha"]),
                iterations=int(params["iterations"]),
                random_state=self.seed,
                num_threads=self.threads,
            )
            model.fit(x, show_progress=False)
        self._users = np.asarray(model.user_factors, dtype=np.float32)
        self._items = np.asarray(model.item_factors, dtype=np.float32)

    def _score_rows(self, rows):
        return self._with_fallback(rows, self._users[rows] @ self._items.T)


BASELINES: dict[str, type[_Baseline]] = {cls.name: cls for cls in (MostPopular, ItemKNN, EASE, ALS)}


def grid_for(name: str, ev: EvaluationParams) -> dict[str, list[Any]]:
    """The tuning grid of a baseline, from params.evaluation.grid."""
    g = ev.grid
    return {
        "most_popular": {},
        "item_knn": {"neighbours": g.item_knn_neighbours, "shrink": g.item_knn_shrink},
        "ease": {"lambda": g.ease_lambda},
        "als": {
            "factors": g.als_factors,
            "regularization": g.als_regularization,
            "iterations": g.als_iterations,
            "alpha": g.als_alpha,
        },
    }[name]


def make_baseline(name: str, params: Params) -> _Baseline:
    """A baseline configured from params (grid, tuning metric, seed, threads)."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}")
    ev = params.evaluation
    extra = {"max_items": ev.ease_max_items} if name == "ease" else {}
    return BASELINES[name](
        grid_for(name, ev),
        tune_metric=ev.primary_metric,
        seed=params.project.seed,
        threads=ev.threads,
        tune_sample_users=ev.sample_users,
        tune_max_cells=ev.max_cells,
        tune_max_interactions=ev.tune_max_interactions,
        **extra,
    )
