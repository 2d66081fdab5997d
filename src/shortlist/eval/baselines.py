"""The baselines every retrieval model must beat, in the same harness.

MostPopular, ItemKNN (cosine with shrinkage), EASE (closed form, Steck 2019) and implicit
ALS (the `implicit` package). Each treats every interaction as a binary positive, tunes
its small grid on the validation split (primary metric of the harness, full ranking,
train items excluded), then refits on train + validation with the chosen values, because
the test period follows the validation period. Users without history get the popularity
ranking. Their catalog (`item_ids`) is the items seen in the data they were fitted on:
they cannot score items without interactions, and the harness gives those -inf.
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

#: Largest catalog EASE will invert densely (n_items^2 float64).
EASE_MAX_ITEMS = 40_000


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
    ):
        self.grid = {k: list(v) for k, v in (grid or {}).items()}
        self.tune_metric = tune_metric
        self.refit_on_validation = refit_on_validation
        self.seed = seed
        self.threads = threads
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
        if len(combos) > 1 and len(validation):
            segment, metric = "all", self.tune_metric
            k = int(metric.split("@")[1]) if "@" in metric else 20
            best = -np.inf
            for combo in combos:
                self._fit_matrix(train, combo)
                res = evaluate(self, train, validation, ks=[k], segments=["all"])
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
        return self

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
        self._user_index = pd.Index(np.unique(u))
        self.item_ids = np.unique(i)
        item_index = pd.Index(self.item_ids)
        x = sp.csr_matrix(
            (
                np.ones(len(u), np.float32),
                (self._user_index.get_indexer(u), item_index.get_indexer(i)),
            ),
            shape=(len(self._user_index), len(self.item_ids)),
        )
        x.sum_duplicates()
        x.data[:] = 1.0
        self._x = x
        pop = np.asarray(x.sum(axis=0)).ravel()
        self._popularity = (pop / max(pop.max(), 1.0)).astype(np.float32)
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
    user's items i of sim(i, j), keeping for each j only its `neighbours` most similar i.
    """

    name = "item_knn"
    block = 2048

    def _fit(self, x, params) -> None:
        k, shrink = int(params["neighbours"]), float(params["shrink"])
        xt = x.T.tocsr()
        norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
        n = x.shape[1]
        rows, cols, vals = [], [], []
        for start in range(0, n, self.block):
            cols_b = np.arange(start, min(start + self.block, n))
            co = (xt @ x[:, cols_b]).toarray()  # (n_items, block)
            sim = co / (norms[:, None] * norms[None, cols_b] + shrink + 1e-12)
            sim[cols_b, np.arange(len(cols_b))] = 0.0
            kk = min(k, n - 1)
            if kk <= 0:
                continue
            top = np.argpartition(-sim, kk - 1, axis=0)[:kk]  # (kk, block)
            v = np.take_along_axis(sim, top, axis=0)
            keep = v > 0
            rows.append(top[keep])
            cols.append(np.broadcast_to(cols_b, top.shape)[keep])
            vals.append(v[keep])
        cat = np.concatenate if rows else (lambda _: np.array([], np.int64))
        self._sim = sp.csr_matrix(
            (cat(vals).astype(np.float32), (cat(rows), cat(cols))), shape=(n, n)
        )

    def _score_rows(self, rows):
        scores = np.asarray((self._x[rows] @ self._sim).todense(), dtype=np.float32)
        return self._with_fallback(rows, scores)


class EASE(_Baseline):
    """Embarrassingly Shallow Autoencoder, closed form (Steck, WWW 2019).

    P = (X^T X + lambda I)^-1, B = I - P diag(1 / diag(P)) (zero diagonal);
    score(u) = x_u B. Dense in n_items: refuses catalogs above EASE_MAX_ITEMS.
    """

    name = "ease"

    def _fit(self, x, params) -> None:
        n = x.shape[1]
        if n > EASE_MAX_ITEMS:
            raise ValueError(f"EASE is dense in items: {n} > {EASE_MAX_ITEMS}")
        g = (x.T @ x).toarray().astype(np.float64)
        g[np.diag_indices(n)] += float(params["lambda"])
        p = np.linalg.inv(g)
        b = p / (-np.diag(p))[None, :]
        b[np.diag_indices(n)] = 0.0
        self._b = b.astype(np.float32)

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
    return BASELINES[name](
        grid_for(name, ev),
        tune_metric=ev.primary_metric,
        seed=params.project.seed,
        threads=ev.threads,
    )
