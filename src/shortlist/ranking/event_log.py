"""The interactions the ranking features know, indexed for "as of time t" questions (an
item's count in the last 7 days, a user's history) that see only events with timestamp
strictly before t, and the item popularity features read from them.

All time-dependent features go through `EventLog._cutoff`, the single point-in-time guard;
`point_in_time=False` disables it (used by the leakage test to prove that the test
detects a leak).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from shortlist.data import schema

DAY = 86_400


class EventLog:
    """Interactions indexed for point-in-time queries (events strictly before t).

    Items are mapped to catalog positions (`item_index`); events on items outside the
    catalog still count in user histories and global volume but not in item statistics.
    """

    def __init__(
        self,
        interactions: pd.DataFrame,
        item_index: dict[str, int],
        *,
        point_in_time: bool = True,
    ) -> None:
        self.point_in_time = point_in_time
        n_items = len(item_index)
        # Ids as integer codes over their sorted vocabularies: a code's order is its id's
        # order, so sorting codes sorts ids, and a log of 10M events keeps 10M int32s
        # instead of 10M string objects.
        user_codes, user_vocab = pd.factorize(interactions[schema.USER_ID].astype(str), sort=True)
        item_codes, item_vocab = pd.factorize(interactions[schema.ITEM_ID].astype(str), sort=True)
        ts = interactions[schema.TIMESTAMP].to_numpy(np.int64)
        order = np.lexsort((item_codes, ts, user_codes))  # by user, time, item; stable
        user_codes, item_codes, ts = (
            user_codes[order],
            item_codes[order].astype(np.int32),
            ts[order],
        )
        self.tmin = int(ts.min()) if len(ts) else 0
        self.tmax = int(ts.max()) if len(ts) else 0
        self._span = self.tmax - self.tmin + 2
        # Global volume: sorted timestamps of every event.
        self._all_ts = np.sort(ts)
        # User side: contiguous per-user segments (sorted by time, then item id).
        self._item_vocab = np.asarray(item_vocab, dtype=object)
        self._user_item_codes = item_codes
        self._user_ts = ts
        starts = np.flatnonzero(np.r_[True, user_codes[1:] != user_codes[:-1]]) if len(ts) else []
        ends = np.r_[starts[1:], len(ts)] if len(ts) else []
        users = np.asarray(user_vocab, dtype=object)[user_codes[starts]] if len(ts) else []
        self._user_seg = {u: (int(s), int(e)) for u, s, e in zip(users, starts, ends, strict=True)}
        # Item side: per-item sorted timestamps packed into one sorted key array.
        vocab_pos = np.array([item_index.get(i, -1) for i in self._item_vocab], dtype=np.int64)
        idx = vocab_pos[item_codes] if len(ts) else np.zeros(0, np.int64)
        known = idx >= 0
        keys = np.sort(idx[known] * self._span + (ts[known] - self.tmin))
        self._item_keys = keys
        self._item_offsets = np.searchsorted(keys, np.arange(n_items + 1) * self._span)
        first_pos = self._item_offsets[:-1]
        has = self._item_offsets[1:] > first_pos
        self._item_first = np.full(n_items, np.iinfo(np.int64).max, dtype=np.int64)
        self._item_first[has] = keys[first_pos[has]] % self._span + self.tmin

    @property
    def end(self) -> int:
        """One second after the last event: 'now' for a snapshot of this log."""
        return self.tmax + 1

    def _cutoff(self, t: np.ndarray | int) -> np.ndarray:
        """THE point-in-time guard: events with timestamp < cutoff are visible."""
        t = np.asarray(t, dtype=np.int64)
        if not self.point_in_time:
            return np.full_like(t, np.iinfo(np.int64).max // 4)
        return t

    def asof(self, t: int) -> int:
        """Freshest time the store can speak for at t: min(t, last event before t + 1)."""
        c = int(self._cutoff(t))
        n = int(np.searchsorted(self._all_ts, c, side="left"))
        last = int(self._all_ts[n - 1]) + 1 if n else self.tmin
        return min(c, last)

    def global_count_before(self, t: np.ndarray | int) -> np.ndarray:
        return np.searchsorted(self._all_ts, self._cutoff(t), side="left")

    def item_count_before(self, item_idx: np.ndarray, t: np.ndarray | int) -> np.ndarray:
        """Events on each item with timestamp < t (t broadcast against item_idx)."""
        c = np.clip(self._cutoff(t), self.tmin, self.tmax + 1) - self.tmin
        q = np.asarray(item_idx, dtype=np.int64) * self._span + c
        return np.searchsorted(self._item_keys, q, side="left") - self._item_offsets[item_idx]

    def item_first_seen(self, item_idx: np.ndarray, t: int) -> np.ndarray:
        """Timestamp of each item's first event before t; int64 max when there is none."""
        first = self._item_first[item_idx]
        return np.where(first < self._cutoff(t), first, np.iinfo(np.int64).max)

    def user_history(self, user_id: str, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(item ids, timestamps) of the user's events before t, oldest first."""
        seg = self._user_seg.get(str(user_id))
        if seg is None:
            return np.array([], dtype=object), np.array([], dtype=np.int64)
        s, e = seg
        n = int(np.searchsorted(self._user_ts[s:e], self._cutoff(t), side="left"))
        return self._item_vocab[self._user_item_codes[s : s + n]], self._user_ts[s : s + n]

    def users(self) -> list[str]:
        return list(self._user_seg)


def popularity_block(
    log: EventLog, item_idx: np.ndarray, asof: int, windows_days: Sequence[int]
) -> np.ndarray:
    """Item popularity over recent windows, its trend, and item age, as of `asof`.

    Columns: log1p(count_w) per window, log share of window volume per window,
    log1p(count before asof), trend per window (rate in the window vs the longest window),
    log1p(item age in days), is_new (no event before asof).
    """
    item_idx = np.asarray(item_idx, dtype=np.int64)
    n_items = len(log._item_first)
    total = log.item_count_before(item_idx, asof)
    cols = []
    counts = []
    shares = []
    g_now = log.global_count_before(asof)
    for w in windows_days:
        start = asof - int(w) * DAY
        c = total - log.item_count_before(item_idx, start)
        vol = g_now - log.global_count_before(start)
        counts.append(c)
        shares.append(np.log((c + 1.0) / (float(vol) + n_items)))
    longest = counts[-1] / float(windows_days[-1])
    trends = [
        np.log1p(c / float(w)) - np.log1p(longest)
        for c, w in zip(counts, windows_days, strict=True)
    ]
    cols += [np.log1p(c) for c in counts] + shares + [np.log1p(total)] + trends[:-1]
    first = log.item_first_seen(item_idx, asof)
    is_new = first == np.iinfo(np.int64).max
    age_days = np.where(is_new, 0.0, (asof - np.minimum(first, asof)) / DAY)
    cols += [np.log1p(age_days), is_new.astype(np.float64)]
    return np.stack(cols, axis=1).astype(np.float32)


def popularity_names(windows_days: Sequence[int]) -> list[str]:
    w = list(windows_days)
    return (
        [f"pop_log_count_{d}d" for d in w]
        + [f"pop_log_share_{d}d" for d in w]
        + ["pop_log_count_all"]
        + [f"pop_trend_{d}d" for d in w[:-1]]
        + ["item_log_age_days", "item_is_new"]
    )
