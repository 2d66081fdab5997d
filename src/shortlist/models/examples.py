"""The towers' training examples and the batches drawn from them.

Each training example is one interaction (user, item, t). Its query sees the user's
features, the context (hour, weekday) of t and a history of the user's other items:
in `causal` mode only items with timestamp < t (next-item prediction, where time is
real), in `leave_one_out` mode the user's last items except the target (a set, where
time was synthesised). A batch adds uniformly sampled negatives to the in-batch ones and
applies id and context dropout, so that content and history carry signal on their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from shortlist.config import TowerParams
from shortlist.data import schema
from shortlist.models.features import FeatureState, encode_context


@dataclass
class TowerExamples:
    """The towers' training examples as aligned arrays (one row per interaction)."""

    user_idx: np.ndarray  # (n,)
    user_feats: np.ndarray  # (n, f)
    history: np.ndarray  # (n, history_len) int32 vocabulary indices, most recent last, 0 = padding
    context: np.ndarray  # (n, 2)
    item_idx: np.ndarray  # (n,)

    def __len__(self) -> int:
        return len(self.item_idx)


def _user_segments(user_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row index, row starts a new user, first row of the row's user) for rows sorted by
    user: the shared bookkeeping of the vectorised history builders."""
    idx = np.arange(len(user_codes))
    new_user = np.r_[True, user_codes[1:] != user_codes[:-1]]
    return idx, new_user, np.maximum.accumulate(np.where(new_user, idx, 0))


def history_before(
    user_codes: np.ndarray, timestamps: np.ndarray, item_idx: np.ndarray, n: int
) -> np.ndarray:
    """(rows, n) histories for rows sorted by (user, timestamp, item).

    Row r gets the last n items of the same user with timestamp strictly before row r's
    (ties at the same second are not history: none of them was known before the others).
    Built with one sliding-window gather, no Python loop over users.
    """
    rows = len(item_idx)
    if rows == 0:
        return np.zeros((0, n), dtype=np.int64)
    idx, new_user, user_start = _user_segments(user_codes)
    new_time = new_user | np.r_[True, timestamps[1:] != timestamps[:-1]]
    group_start = np.maximum.accumulate(np.where(new_time, idx, 0))  # first row of the tie
    return _gather_windows(item_idx, group_start - n, np.zeros(rows, dtype=np.int64), user_start, n)


def history_leave_one_out(user_codes: np.ndarray, item_idx: np.ndarray, n: int) -> np.ndarray:
    """(rows, n) histories for rows sorted by (user, timestamp, item): row r gets the last n
    items of its user's rows other than r itself, most recent last, left-padded with 0.

    This matches the evaluation task (all of a user's train items -> their later items)
    instead of next-item prediction, where early examples see nearly empty histories.
    The target is never in its own history. Vectorised: the window is the user's last
    n + 1 rows with one column dropped (r's own if r is in it, else the oldest).
    """
    rows = len(item_idx)
    if rows == 0:
        return np.zeros((0, n), dtype=np.int64)
    idx, _, user_start = _user_segments(user_codes)
    last_user = np.r_[user_codes[1:] != user_codes[:-1], True]
    user_end = np.minimum.accumulate(np.where(last_user, idx + 1, rows)[::-1])[::-1]
    first = user_end - n - 1  # first row of the (n + 1)-row window
    drop = np.maximum(idx - first, 0)  # the window column to leave out
    return _gather_windows(item_idx, first, drop, user_start, n, skip=True)


#: Rows gathered at once by `_gather_windows`: bounds its (rows, n) temporaries.
GATHER_ROWS = 1 << 20


def _gather_windows(
    item_idx: np.ndarray,
    first: np.ndarray,
    drop: np.ndarray,
    user_start: np.ndarray,
    n: int,
    skip: bool = False,
) -> np.ndarray:
    """(rows, n) int32 item indices: row r reads rows first[r] + 0..n-1 (with `skip`, the
    column at drop[r] and after shifted by one), 0 where that row is before user_start[r].
    Built in blocks of GATHER_ROWS rows, so 8M examples x 50 need 1.6 GB, not 4 x 3.2 GB."""
    rows = len(item_idx)
    out = np.empty((rows, n), dtype=np.int32)
    cols = np.arange(n)[None, :]
    for lo in range(0, rows, GATHER_ROWS):
        hi = min(lo + GATHER_ROWS, rows)
        window = first[lo:hi, None] + cols
        if skip:
            window += cols >= drop[lo:hi, None]
        valid = window >= user_start[lo:hi, None]
        out[lo:hi] = np.where(valid, item_idx[np.clip(window, 0, rows - 1)], 0)
    return out


def resolve_history_mode(mode: str, real_time: bool) -> str:
    """`auto` -> causal where time is real, leave_one_out (a set) where it is not."""
    if mode != "auto":
        return mode
    return "causal" if real_time else "leave_one_out"


def build_examples(
    train: pd.DataFrame,
    state: FeatureState,
    users: pd.DataFrame | None,
    history_len: int,
    history_mode: str = "causal",
) -> TowerExamples:
    """One example per train interaction. history_mode "causal": the history holds only
    items strictly before the target's time; "leave_one_out": the user's last history_len
    train items other than the target (see history_leave_one_out)."""
    u = train[schema.USER_ID].astype(str).to_numpy()
    i = train[schema.ITEM_ID].astype(str).to_numpy()
    t = train[schema.TIMESTAMP].to_numpy(dtype=np.int64)
    # Sorted factorisation: the integer codes order as the strings do, so sorting the
    # codes gives the (user, timestamp, item) order without comparing 8M strings.
    user_codes, uniq = pd.factorize(u, sort=True)
    item_codes = pd.factorize(i, sort=True)[0]
    order = np.lexsort((item_codes, t, user_codes))
    user_codes, i, t = user_codes[order], i[order], t[order]
    item_idx = state.item_index(i)
    if history_mode == "leave_one_out":
        hist = history_leave_one_out(user_codes, item_idx, history_len)
    elif history_mode == "causal":
        hist = history_before(user_codes, t, item_idx, history_len)
    else:
        raise ValueError(f"unknown history_mode {history_mode!r}")
    enc = state.encode_users(uniq, users)
    return TowerExamples(
        user_idx=enc["user_idx"][user_codes],
        user_feats=enc["user_feats"][user_codes],
        history=hist,
        context=encode_context(t, len(t)),
        item_idx=item_idx,
    )


def vocab_catalog(state: FeatureState, items: pd.DataFrame) -> pd.DataFrame:
    """The item table restricted to and ordered like the training vocabulary."""
    table = items.assign(**{schema.ITEM_ID: items[schema.ITEM_ID].astype(str)})
    table = table.drop_duplicates(schema.ITEM_ID).set_index(schema.ITEM_ID)
    table = table.reindex(state.item_vocab)
    table.index.name = schema.ITEM_ID
    return table.reset_index()


def item_feature_tensors(state: FeatureState, items: pd.DataFrame) -> dict[str, torch.Tensor]:
    """Content features per vocabulary index (row 0: the OOV bucket, zero content), so that
    a batch gathers its candidates' content by index."""
    catalog = vocab_catalog(state, items)
    enc = state.encode_items(catalog)
    out = {}
    for key in ("genres", "title", "numerics"):
        arr = enc[key]
        pad = np.zeros((1, *arr.shape[1:]), dtype=arr.dtype)
        out[key] = torch.from_numpy(np.concatenate([pad, arr]))
    return out


def accidental_hits(pos: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Flat indices into the (len(pos), len(cand)) logits of the accidental hits: where a
    candidate is the example's own item but not its own positive (the diagonal of the
    batch's positives), found by sorting the candidates rather than comparing every pair."""
    order = np.argsort(cand, kind="stable")
    ordered = cand[order]
    lo = np.searchsorted(ordered, pos, side="left")
    counts = np.searchsorted(ordered, pos, side="right") - lo
    rows = np.repeat(np.arange(len(pos)), counts)
    starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
    cols = order[starts + np.arange(len(rows))]
    keep = cols != rows
    return rows[keep] * len(cand) + cols[keep]


def make_batch(
    ex: TowerExamples, rows: np.ndarray, tp: TowerParams, rng: np.random.Generator, n_items: int
) -> dict[str, torch.Tensor]:
    """The tensors of one step on ex[rows]: the positives, then `tp.mixed_negatives` items
    drawn uniformly, as candidates; item and user ids dropped to their OOV bucket with
    probability `tp.id_dropout`, the context with `tp.context_dropout`.

    Rows are gathered with `np.take`, which copies a row of a 2-D array whole where
    indexing copies it element by element: 2-5x faster for the batch's few hundred bytes
    a row, scattered over the whole example table.
    """
    pos = ex.item_idx.take(rows)
    cand = pos
    if tp.mixed_negatives:
        cand = np.concatenate([pos, rng.integers(1, n_items + 1, size=tp.mixed_negatives)])
    cand_in = np.where(rng.random(len(cand)) < tp.id_dropout, 0, cand)
    user_idx = ex.user_idx.take(rows)
    drop_user = rng.random(len(rows)) < tp.id_dropout
    user_idx = np.where(drop_user, rng.integers(0, tp.user_buckets, size=len(rows)), user_idx)
    context = ex.context.take(rows, axis=0)
    context = np.where(rng.random((len(rows), 1)) < tp.context_dropout, 0, context)
    return {
        "item_idx": torch.from_numpy(pos),
        "candidates": torch.from_numpy(cand),
        "hits": torch.from_numpy(accidental_hits(pos, cand)),
        "candidates_in": torch.from_numpy(cand_in),
        "user_idx": torch.from_numpy(user_idx),
        "user_feats": torch.from_numpy(ex.user_feats.take(rows, axis=0)),
        "history": torch.from_numpy(ex.history.take(rows, axis=0).astype(np.int64)),
        "context": torch.from_numpy(context),
    }
