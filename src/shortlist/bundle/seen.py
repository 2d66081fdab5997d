"""Every item each user has interacted with, kept compactly in the bundle for exclude_seen.

`histories.parquet` keeps only the most recent `bundle.history_len` items (what the
towers and the ranker read); a heavy user has seen many more, and `exclude_seen` must
remove all of them. `seen.parquet` holds per user the sorted, distinct index rows of
every item in their interactions (int32: 4 bytes per distinct user-item pair), and
`SeenSets` answers "which rows has this user seen" without building a Python set per
user at load time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from shortlist.bundle import gentle

USER = "user_id"
ROWS = "rows"


def seen_table(interactions: pd.DataFrame, item_ids: np.ndarray) -> pd.DataFrame:
    """(user_id, rows) per user: the distinct index rows of every item they interacted with.

    Items absent from the catalog (`item_ids`) have no row and are dropped: they can never
    be served, so there is nothing to exclude."""
    from shortlist.data import schema

    users = interactions[schema.USER_ID].astype(str).to_numpy()
    items = interactions[schema.ITEM_ID].astype(str).to_numpy()
    row_of = pd.Index(np.asarray(item_ids, dtype=str))
    rows = row_of.get_indexer(items)
    keep = rows >= 0
    pairs = pd.DataFrame({USER: users[keep], ROWS: rows[keep].astype(np.int32)})
    pairs = pairs.drop_duplicates().sort_values([USER, ROWS], kind="stable")
    grouped = pairs.groupby(USER, sort=True)[ROWS]
    return pd.DataFrame(
        {USER: list(grouped.groups.keys()), ROWS: [g.to_numpy() for _, g in grouped]}
    )


class SeenSets:
    """Per-user seen rows as one flat int32 array plus offsets (CSR), looked up by user id."""

    def __init__(self, users: np.ndarray, offsets: np.ndarray, values: np.ndarray) -> None:
        self.user_row = gentle.PositionMap(users)
        self.offsets = offsets
        self.values = values

    @classmethod
    def from_parquet(cls, source: Any) -> SeenSets:
        """`source`: a path or an in-memory Arrow buffer reader of a `seen.parquet`."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(source)
        column = table.column(ROWS).combine_chunks()
        if isinstance(column, pa.ChunkedArray):  # empty table
            column = pa.array([], type=pa.list_(pa.int32()))
        users = table.column(USER).combine_chunks()
        users = users.to_numpy(zero_copy_only=False).astype(object)
        offsets = np.asarray(column.offsets, dtype=np.int64)
        values = np.asarray(column.values, dtype=np.int64)
        return cls(users, offsets, values)

    def rows(self, user_id: str | None) -> np.ndarray:
        """The index rows `user_id` has seen (empty for an unknown or anonymous user)."""
        if user_id is None:
            return self.values[:0]
        r = self.user_row.get(user_id)
        if r is None:
            return self.values[:0]
        return self.values[self.offsets[r] : self.offsets[r + 1]]

    def __len__(self) -> int:
        return len(self.user_row)
