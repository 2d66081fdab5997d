"""The towers' validation during training: full ranking over the training catalog.

Every validation user's query (from their train history) is scored against every item
of the training vocabulary, their train items excluded, and Recall@K / NDCG@K are
averaged over the users (`shortlist.eval.metrics`' definitions). Users are scored in
blocks, so memory stays bounded at any catalog size. Early stopping picks its epoch
on these numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from shortlist.data import schema
from shortlist.eval.metrics import BLOCK_CELLS, mean_ranking_metrics_in_blocks
from shortlist.models.features import FeatureState
from shortlist.models.two_tower import TwoTowerRetriever, histories_from

VALIDATION_KS = (20, 200)


class TowerValidationSet:
    """The validation users of a training run: their histories and last train timestamps
    (the query's inputs), their train items (excluded from their ranking) and their
    validation items in the training vocabulary (what should be retrieved).

    `max_users` (0: all) keeps a seeded sample of the users, so each epoch's full ranking
    stays within its cell budget at any catalog size. Catalog columns are vocabulary indices - 1; rows follow `user_ids`, and `seen_rows`
    (sorted) with `seen_cols` list the excluded cells, `seen_ptr[r]` where row r's start.
    """

    def __init__(
        self,
        state: FeatureState,
        train: pd.DataFrame,
        validation: pd.DataFrame,
        history_len: int,
        max_users: int = 0,
        seed: int = 0,
    ) -> None:
        val = validation[validation[schema.ITEM_ID].astype(str).isin(state._item_index)]
        self.user_ids = sorted(set(val[schema.USER_ID].astype(str)))
        self.users_total = len(self.user_ids)
        if max_users and len(self.user_ids) > max_users:
            # A seeded sample stands for all (the early-stopping signal, not a result).
            picked = np.random.default_rng(seed).choice(len(self.user_ids), max_users, False)
            self.user_ids = [self.user_ids[i] for i in np.sort(picked)]
            val = val[val[schema.USER_ID].astype(str).isin(set(self.user_ids))]
        self.histories = histories_from(train, self.user_ids, history_len)
        last = train.groupby(train[schema.USER_ID].astype(str))[schema.TIMESTAMP].max()
        self.timestamps = last.reindex(self.user_ids).to_numpy(dtype=float)
        row = {u: k for k, u in enumerate(self.user_ids)}
        tr = train[train[schema.USER_ID].astype(str).isin(row)]
        seen_rows = tr[schema.USER_ID].astype(str).map(row).to_numpy()
        seen_cols = state.item_index(tr[schema.ITEM_ID].astype(str)) - 1
        order = np.argsort(seen_rows, kind="stable")
        self.seen_rows = seen_rows[order]
        self.seen_cols = seen_cols[order]
        self.seen_ptr = np.searchsorted(self.seen_rows, np.arange(len(self.user_ids) + 1))
        self.relevant: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(self.user_ids)
        vr = val[schema.USER_ID].astype(str).map(row).to_numpy()
        vc = state.item_index(val[schema.ITEM_ID].astype(str)) - 1
        for r, group in pd.Series(vc).groupby(vr):
            self.relevant[int(r)] = np.unique(group.to_numpy())

    def __len__(self) -> int:
        return len(self.user_ids)


def evaluate_retriever(
    retriever: TwoTowerRetriever,
    vset: TowerValidationSet,
    catalog: pd.DataFrame,
    users: pd.DataFrame | None,
    ks: tuple[int, ...] = VALIDATION_KS,
    popularity_weight: float = 0.0,
    log_popularity: np.ndarray | None = None,
    max_cells: int = BLOCK_CELLS,
) -> dict[str, float]:
    """Mean validation Recall@K and NDCG@K; catalog rows are in vocabulary order (index
    k -> row k - 1). With `popularity_weight` the score adds that times the temperature
    times `log_popularity`, as serving does. At most `max_cells` scores are held at once.
    """
    if not len(vset):
        return {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    items = retriever.embed_items(catalog)
    queries = retriever.embed_users(vset.user_ids, vset.histories, users, vset.timestamps)
    bias = None
    if popularity_weight and log_popularity is not None:
        bias = popularity_weight * retriever.temperature * log_popularity

    def score_block(start: int, stop: int) -> np.ndarray:
        scores = queries[start:stop] @ items.T
        if bias is not None:
            scores += bias[None, :]
        lo, hi = vset.seen_ptr[start], vset.seen_ptr[stop]
        scores[vset.seen_rows[lo:hi] - start, vset.seen_cols[lo:hi]] = -np.inf
        return scores

    return mean_ranking_metrics_in_blocks(
        score_block, vset.relevant, ks, len(items), max_cells=max_cells
    )
