"""Stage `export_recs`: top-K recommendations for a list of users, as CSV.

Writes ``user_id,item_id,rank`` (original ids, rank 1..K) so any external harness can
score the model on its own split. The user's interactions in DATA_DIR are excluded and
supply the history and request context; the catalog is DATA_DIR's item table, embedded by
the model's item tower (items unseen at training are reached through content). Scores are
the exact inner product of `query_vectors` and `item_vectors` (what a flat index serves).
Stage "funnel" re-ranks with the ranker when MODEL_DIR has one; without a ranker it is the
retrieval stage. Items without interactions in the model's training data take at most
`serving.max_cold_share` of each list, as in serving.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from shortlist.config import Params

USER_BATCH = 1024


def run(
    params: Params,
    *,
    model_dir: str,
    data_dir: str,
    users_csv: str,
    k: int,
    out_csv: str,
    stage: str | None = None,
) -> int:
    """Write recommendations for the users in USERS_CSV; returns the number of rows."""
    from shortlist.data import schema
    from shortlist.data.io import read_dataset
    from shortlist.models.two_tower import TwoTowerRetriever
    from shortlist.ranking.cold_share import cap_cold_scores

    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if stage not in (None, "retrieval", "funnel"):
        raise ValueError(f"unknown stage {stage!r} (retrieval or funnel)")
    requested = pd.read_csv(users_csv, dtype={schema.USER_ID: str})
    if schema.USER_ID not in requested:
        raise ValueError(f"{users_csv}: needs a {schema.USER_ID} column")
    user_ids = list(dict.fromkeys(requested[schema.USER_ID].astype(str)))

    model = TwoTowerRetriever.load(str(model_dir))
    data = read_dataset(str(data_dir))
    items = data.items.drop_duplicates(schema.ITEM_ID).reset_index(drop=True)
    item_ids = items[schema.ITEM_ID].astype(str).to_numpy()
    col_of = pd.Index(item_ids)
    item_vecs = model.item_vectors(items)
    # Items the model never saw an interaction of take at most serving.max_cold_share.
    cold_cols = np.flatnonzero(model.state.item_index(item_ids) == 0)
    inter = data.interactions
    inter = inter[inter[schema.USER_ID].astype(str).isin(set(user_ids))]
    seen_u = inter[schema.USER_ID].astype(str).to_numpy()
    seen_i = col_of.get_indexer(inter[schema.ITEM_ID].astype(str).to_numpy())

    ranker = None
    if stage != "retrieval":
        from shortlist.ranking.ranker import Ranker

        if Ranker.exists(str(model_dir)):
            ranker = Ranker.load(str(model_dir))

    from shortlist.models.recommender import UserHistories

    by_user = UserHistories(inter)  # once: each batch then reads its own users' rows
    frames = []
    for start in range(0, len(user_ids), USER_BATCH):
        batch = user_ids[start : start + USER_BATCH]
        histories = by_user.histories(batch, model.history_len)
        timestamps = by_user.last_timestamps(batch)
        scores = model.query_vectors(batch, histories, data.users, timestamps) @ item_vecs.T
        row_of = pd.Index(batch)
        r = row_of.get_indexer(seen_u)
        ok = (r >= 0) & (seen_i >= 0)
        scores[r[ok], seen_i[ok]] = -np.inf
        if ranker is not None:  # funnel: rerank the top-N candidates with the ranker
            from shortlist.ranking.funnel import rerank_matrix

            full = by_user.histories(batch, len(inter) + 1)
            scores = rerank_matrix(
                ranker, batch, full, scores, item_ids, timestamps, params.ranker.candidates
            )
        scores = cap_cold_scores(scores, cold_cols, k, params.serving.max_cold_share)
        frames.append(_top_k(batch, scores, item_ids, k))
    out = pd.concat(frames, ignore_index=True) if frames else _top_k([], np.zeros((0, 0)), [], k)
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(out_csv, index=False)
    return len(out)


def _top_k(user_ids, scores: np.ndarray, item_ids, k: int) -> pd.DataFrame:
    """Best k finite scores per user (ties: lower catalog index first)."""
    n, m = scores.shape
    kk = min(k, m)
    if n == 0 or kk == 0:
        return pd.DataFrame({"user_id": [], "item_id": [], "rank": []}).astype(
            {"user_id": str, "item_id": str, "rank": int}
        )
    part = (
        np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        if kk < m
        else np.tile(np.arange(m), (n, 1))
    )
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    idx = np.take_along_axis(part, order, axis=1)
    valid = np.isfinite(np.take_along_axis(scores, idx, axis=1))
    rows = np.repeat(np.arange(n), kk)
    ranks = np.tile(np.arange(1, kk + 1), n)
    keep = valid.ravel()
    return pd.DataFrame(
        {
            "user_id": np.asarray(user_ids, dtype=object)[rows[keep]],
            "item_id": np.asarray(item_ids, dtype=object)[idx.ravel()[keep]],
            "rank": ranks[keep],
        }
    )
