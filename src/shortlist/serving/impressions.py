"""The impressions log: every served list, one row per shown item, as rotated Parquet files.

Durability comes from a local write-ahead file (`shortlist.serving.wal`, shared with the
events log). `append` writes the served list as one
JSON line to the current segment under `serving.impressions_wal_dir` with a plain
`write()` before the request answers: from then on the list is in the kernel, so killing
the process (even kill -9) loses none of it. A sync thread `fdatasync`s the segment every
`serving.impressions_fsync_ms` (when something was written), so a machine crash or power
loss loses at most that window; with 0 the request itself syncs before it answers.

The request thread pays one `json.dumps` of its list (outside the lock) and one buffered
`write()` to the page cache under the lock: microseconds, never a disk flush (unless
fsync_ms is 0). Rows are also kept in memory; a background writer turns every
`serving.impressions_rotate_rows` rows (and, on a quiet server, whatever is buffered
every `serving.impressions_flush_seconds`) into one Parquet file under
`serving.impressions_dir` (a directory or s3://), and only then deletes the segment that
holds the same rows. A new log replays the segments a dead process left behind into
Parquet before it serves; a segment and its Parquet file share one name stem, so a crash
between writing the file and deleting the segment never writes a list twice. A live
log holds an exclusive `flock` on its segment, so another process sharing the directory
never replays it.

Files are named `impressions-<unix ms>-<pid>-<token>-<seq>.parquet` and written
atomically (temp + rename locally), so a reader never sees half a file. Columns: request_id, timestamp
(unix seconds, float64), endpoint, user_id (null for anonymous and similar-items
requests), bundle_id, item_id, position (0-based), score, retrieval_score (null for the
popularity prior), propensity (see `shortlist.serving.recommend`: the probability the
policy shows this item at this position), policy, strategy, explored (the item was
drawn by an exploration slot, `shortlist.serving.explore`) and exploration_cost (the
list's expected loss in score against the greedy list, repeated on each of its rows; 0
when greedy) and bandit_draw (the item is the bandit's cold-section draw,
`shortlist.serving.bandit`: a trial the bandit replays after a restart). Files written
before these columns existed lack them: read them as False, 0 and False.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pyarrow as pa

from shortlist.serving.wal import WriteAheadLog

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("timestamp", pa.float64(), nullable=False),
        pa.field("endpoint", pa.string(), nullable=False),
        pa.field("user_id", pa.string()),
        pa.field("bundle_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("retrieval_score", pa.float64()),
        pa.field("propensity", pa.float64(), nullable=False),
        pa.field("policy", pa.string(), nullable=False),
        pa.field("strategy", pa.string(), nullable=False),
        pa.field("explored", pa.bool_(), nullable=False),
        pa.field("exploration_cost", pa.float64(), nullable=False),
        pa.field("bandit_draw", pa.bool_(), nullable=False),
    ]
)
COLUMNS = SCHEMA.names


def _extend(columns: dict[str, list[Any]], record: dict[str, Any]) -> int:
    """Add one served list (a WAL record) as rows; returns the number of rows."""
    items = record["item_ids"]
    n = len(items)
    c = columns
    for key in ("request_id", "timestamp", "endpoint", "user_id", "bundle_id"):
        c[key].extend([record[key]] * n)
    c["item_id"].extend(items)
    c["position"].extend(range(n))
    c["score"].extend(record["scores"])
    retrieval = record["retrieval_scores"]
    c["retrieval_score"].extend(retrieval if retrieval else [None] * n)
    c["propensity"].extend(record["propensities"])
    c["policy"].extend([record["policy"]] * n)
    c["strategy"].extend([record["strategy"]] * n)
    c["explored"].extend(record.get("explored") or [False] * n)
    c["exploration_cost"].extend([float(record.get("exploration_cost") or 0.0)] * n)
    drawn = record.get("bandit_position")
    c["bandit_draw"].extend(pos == drawn for pos in range(n))
    return n


class ImpressionLog(WriteAheadLog):
    """Thread-safe impressions log: write-ahead JSON lines, rotated into Parquet files.

    A write-ahead failure (a full disk) never fails the request: the list stays in memory
    and reaches Parquet with the next rotation, only without the kill -9 guarantee."""

    prefix = "impressions"
    schema = SCHEMA
    record_name = "served list"
    records_name = "served lists"
    dir_setting = "serving.impressions_dir"
    wal_dir_setting = "serving.impressions_wal_dir"

    def __init__(self, *args: Any, **kwargs: Any):
        self._wal_error_logged = False
        super().__init__(*args, **kwargs)

    @property
    def lists_replayed(self) -> int:
        return self.records_replayed

    def _extend(self, columns: dict[str, list[Any]], record: Any) -> int:
        return _extend(columns, record)

    def append(
        self,
        *,
        request_id: str,
        endpoint: str,
        user_id: str | None,
        bundle_id: str,
        item_ids: list[str],
        scores: list[float],
        retrieval_scores: list[float] | None,
        propensities: list[float],
        policy: str,
        strategy: str,
        explored: list[bool] | None = None,
        exploration_cost: float = 0.0,
        bandit_position: int | None = None,
    ) -> None:
        """Log one served list: in the write-ahead file (kernel) when this returns.
        `bandit_position`: the position holding the bandit's cold-section draw, if any."""
        if not item_ids:
            return
        record = {
            "request_id": request_id,
            "timestamp": time.time(),
            "endpoint": endpoint,
            "user_id": user_id,
            "bundle_id": bundle_id,
            "item_ids": list(item_ids),
            "scores": scores,
            "retrieval_scores": retrieval_scores,
            "propensities": propensities,
            "policy": policy,
            "strategy": strategy,
            "explored": None if explored is None else [bool(x) for x in explored],
            "exploration_cost": float(exploration_cost),
            "bandit_position": None if bandit_position is None else int(bandit_position),
        }
        line = self._encode(record)
        with self._lock:
            if self._closed:
                return
            try:
                seg = self._write_ahead_locked(line)
                self._wal_error_logged = False
            except OSError:  # a full disk must not stop serving: the row stays in memory
                seg = None
                self.wal_errors += 1
                if not self._wal_error_logged:
                    log.exception(
                        "could not write the impressions write-ahead file in %s", self.wal_dir
                    )
                    self._wal_error_logged = True
            self._add_locked(record)
        if seg is not None and self.fsync_ms <= 0:
            self.sync()  # this list (and any written beside it) plus a new file's entry
