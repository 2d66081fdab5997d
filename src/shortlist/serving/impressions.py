"""The impressions log: every served list, one row per shown item, as rotated Parquet files.

Request threads only append to an in-memory buffer under a lock (microseconds); a
background writer turns every `serving.impressions_rotate_rows` rows into one Parquet
file under `serving.impressions_dir` (a directory or s3://), also writes whatever is
buffered every `serving.impressions_flush_seconds` (so a crash or a kill -9 loses at most
that much of the log, however quiet the traffic), and `close()` writes the remainder; a
request never waits on disk. Files are named
`impressions-<unix ms>-<pid>-<seq>.parquet` and written atomically (temp + rename
locally), so a reader never sees half a file.

Columns: request_id, timestamp (unix seconds, float64), endpoint, user_id (null for
anonymous and similar-items requests), bundle_id, item_id, position (0-based), score,
retrieval_score (null for the popularity prior), propensity (see
`shortlist.serving.recommend`: the probability the policy shows this item at this
position), policy, strategy.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shortlist.storage import open_store

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
    ]
)
COLUMNS = SCHEMA.names


class ImpressionLog:
    """Thread-safe, buffered, rotated Parquet writer for served lists."""

    def __init__(
        self,
        directory: str,
        rotate_rows: int,
        endpoint_url: str | None = None,
        flush_seconds: float = 0.0,
    ):
        self.directory = directory
        self.rotate_rows = rotate_rows
        self.flush_seconds = flush_seconds  # 0: only on rotation and close
        self._store = open_store(directory, endpoint_url=endpoint_url)
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._columns: dict[str, list[Any]] = {c: [] for c in COLUMNS}
        self._rows = 0
        self._pending: list[dict[str, list[Any]]] = []
        self._wake = threading.Event()
        self._closed = False
        self._seq = 0
        self.files_written = 0
        self.rows_written = 0
        self._writer = threading.Thread(target=self._run, name="impressions-writer", daemon=True)
        self._writer.start()

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
    ) -> None:
        """Buffer one served list (one row per position)."""
        n = len(item_ids)
        if n == 0:
            return
        now = time.time()
        with self._lock:
            if self._closed:
                return
            c = self._columns
            c["request_id"].extend([request_id] * n)
            c["timestamp"].extend([now] * n)
            c["endpoint"].extend([endpoint] * n)
            c["user_id"].extend([user_id] * n)
            c["bundle_id"].extend([bundle_id] * n)
            c["item_id"].extend(item_ids)
            c["position"].extend(range(n))
            c["score"].extend(scores)
            c["retrieval_score"].extend(retrieval_scores if retrieval_scores else [None] * n)
            c["propensity"].extend(propensities)
            c["policy"].extend([policy] * n)
            c["strategy"].extend([strategy] * n)
            self._rows += n
            if self._rows >= self.rotate_rows:
                self._rotate_locked()
                self._wake.set()

    def _rotate_locked(self) -> None:
        if self._rows:
            self._pending.append(self._columns)
            self._columns = {c: [] for c in COLUMNS}
            self._rows = 0

    def _run(self) -> None:
        while True:
            woke = self._wake.wait(self.flush_seconds or None)
            self._wake.clear()
            if not woke:  # the flush timer: write what is buffered, however little
                with self._lock:
                    self._rotate_locked()
            self._drain()
            with self._lock:
                if self._closed and not self._pending:
                    return

    def _drain(self) -> None:
        # One drainer at a time, so when flush() returns every rotated batch is written.
        with self._io_lock:
            while True:
                with self._lock:
                    if not self._pending:
                        return
                    batch = self._pending.pop(0)
                try:
                    self._write(batch)
                except Exception:  # noqa: BLE001 - a lost log file must not stop serving
                    log.exception("could not write an impressions file to %s", self.directory)

    def _write(self, batch: dict[str, list[Any]]) -> None:
        table = pa.Table.from_pydict(batch, schema=SCHEMA)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self._seq += 1
        name = f"impressions-{int(time.time() * 1000)}-{os.getpid()}-{self._seq:06d}.parquet"
        self._store.write_bytes(name, buf.getvalue())
        self.files_written += 1
        self.rows_written += table.num_rows

    def flush(self) -> None:
        """Write what is buffered now (also on shutdown); returns when it is on disk."""
        with self._lock:
            self._rotate_locked()
        self._drain()

    def close(self) -> None:
        """Flush the remainder and stop the writer."""
        self.flush()
        with self._lock:
            self._closed = True
        self._wake.set()
        self._writer.join(timeout=30)
