"""The impressions log: every served list, one row per shown item, as rotated Parquet files.

Durability comes from a local write-ahead file. `append` writes the served list as one
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
when greedy). Files written before these two columns existed lack them: read them as
False and 0.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shortlist.storage import is_remote, open_store

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
    ]
)
COLUMNS = SCHEMA.names
WAL_SUFFIX = ".jsonl"
DEFAULT_WAL_SUBDIR = ".wal"  # inside a local impressions_dir; Parquet readers skip dot-dirs


def _empty() -> dict[str, list[Any]]:
    return {c: [] for c in COLUMNS}


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
    return n


class _Segment:
    """One write-ahead file: the JSON lines of exactly the rows of one Parquet file."""

    def __init__(self, path: Path):
        self.path = path
        self.stem = path.name[: -len(WAL_SUFFIX)]
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours while we live
        except OSError:
            os.close(self.fd)
            raise
        self.io = threading.Lock()  # fsync vs close
        self.dirty = False
        self.new = True  # its directory entry still needs a sync
        self.closed = False

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def sync(self) -> None:
        with self.io:
            if not self.closed:
                os.fdatasync(self.fd)

    def remove(self) -> None:
        with self.io:
            if not self.closed:
                self.closed = True
                os.close(self.fd)
        self.path.unlink(missing_ok=True)


class ImpressionLog:
    """Thread-safe impressions log: write-ahead JSON lines, rotated into Parquet files."""

    def __init__(
        self,
        directory: str,
        rotate_rows: int,
        endpoint_url: str | None = None,
        flush_seconds: float = 0.0,
        wal_dir: str | None = None,
        fsync_ms: float = 5.0,
    ):
        self.directory = directory
        self.rotate_rows = rotate_rows
        self.flush_seconds = flush_seconds  # 0: only on rotation and close
        self.fsync_ms = fsync_ms  # 0: the request syncs before it answers
        if wal_dir is None:
            if is_remote(directory):
                raise ValueError(
                    f"serving.impressions_wal_dir must name a local directory when "
                    f"serving.impressions_dir is remote ({directory})"
                )
            wal_dir = os.path.join(directory, DEFAULT_WAL_SUBDIR)
        if is_remote(wal_dir):
            raise ValueError(f"serving.impressions_wal_dir must be local, got {wal_dir}")
        self.wal_dir = Path(wal_dir)
        self.wal_dir.mkdir(parents=True, exist_ok=True)
        self._store = open_store(directory, endpoint_url=endpoint_url)
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._columns = _empty()
        self._rows = 0
        self._segment: _Segment | None = None
        self._live: list[_Segment] = []  # current + rotated, not yet in Parquet
        self._pending: list[tuple[dict[str, list[Any]], _Segment]] = []
        self._wake = threading.Event()
        self._stop_sync = threading.Event()
        self._closed = False
        self._seq = 0
        self._token = os.urandom(3).hex()
        self._wal_error_logged = False
        self.files_written = 0
        self.rows_written = 0
        self.lists_replayed = 0
        self.rows_replayed = 0
        self.lines_skipped = 0
        self.wal_errors = 0
        self.replay()
        self._writer = threading.Thread(target=self._run, name="impressions-writer", daemon=True)
        self._writer.start()
        self._syncer: threading.Thread | None = None
        if fsync_ms > 0:
            self._syncer = threading.Thread(
                target=self._sync_loop, name="impressions-fsync", daemon=True
            )
            self._syncer.start()

    # -- the request path -------------------------------------------------------------

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
    ) -> None:
        """Log one served list: in the write-ahead file (kernel) when this returns."""
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
        }
        line = json.dumps(record, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            if self._closed:
                return
            seg = self._write_ahead_locked(line)
            self._rows += _extend(self._columns, record)
            if self._rows >= self.rotate_rows:
                self._rotate_locked()
                self._wake.set()
        if seg is not None and self.fsync_ms <= 0:
            self.sync()  # this list (and any written beside it) plus a new file's entry

    def _write_ahead_locked(self, line: bytes) -> _Segment | None:
        try:
            if self._segment is None:
                self._segment = self._open_segment()
                self._live.append(self._segment)
            self._segment.write(line)
            self._segment.dirty = True
            self._wal_error_logged = False
            return self._segment
        except OSError:  # a full disk must not stop serving: the row stays in memory
            self.wal_errors += 1
            if not self._wal_error_logged:
                log.exception(
                    "could not write the impressions write-ahead file in %s", self.wal_dir
                )
                self._wal_error_logged = True
            return None

    def _next_stem(self) -> str:
        # The instance token keeps two logs of one process (same pid, same millisecond,
        # both at seq 1) from ever choosing the same name.
        self._seq += 1
        ms = int(time.time() * 1000)
        return f"impressions-{ms}-{os.getpid()}-{self._token}-{self._seq:06d}"

    def _open_segment(self) -> _Segment:
        return _Segment(self.wal_dir / (self._next_stem() + WAL_SUFFIX))

    def _rotate_locked(self) -> None:
        if self._rows:
            seg = self._segment
            self._segment = None
            if seg is None:  # the write-ahead file failed: a name for the Parquet file only
                seg = _NoSegment(self._next_stem())
            self._pending.append((self._columns, seg))
            self._columns = _empty()
            self._rows = 0

    # -- background threads -----------------------------------------------------------

    def _sync_loop(self) -> None:
        interval = self.fsync_ms / 1000.0
        while not self._stop_sync.wait(interval):
            self.sync()

    def sync(self) -> None:
        """fdatasync every segment written since the last sync (and new directory entries)."""
        with self._lock:
            dirty = [s for s in self._live if s.dirty or s.new]
            new = any(s.new for s in dirty)
            for s in dirty:
                s.dirty = s.new = False
        try:
            if new:
                _sync_dir(self.wal_dir)
            for s in dirty:
                s.sync()
        except OSError:
            log.exception("could not sync the impressions write-ahead file in %s", self.wal_dir)

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
                    batch, seg = self._pending.pop(0)
                try:
                    self._write(batch, seg.stem)
                except Exception:  # noqa: BLE001 - a lost log file must not stop serving
                    # The segment stays on disk: the next start replays it.
                    log.exception("could not write an impressions file to %s", self.directory)
                    seg = None
                if seg is not None:
                    with self._lock:
                        if seg in self._live:
                            self._live.remove(seg)
                    seg.remove()

    def _write(self, batch: dict[str, list[Any]], stem: str) -> None:
        table = pa.Table.from_pydict(batch, schema=SCHEMA)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self._store.write_bytes(stem + ".parquet", buf.getvalue())
        self.files_written += 1
        self.rows_written += table.num_rows

    # -- recovery ---------------------------------------------------------------------

    def replay(self) -> int:
        """Turn write-ahead segments no live log holds into Parquet; returns lists replayed.

        A line that does not parse (only a power loss can tear one) is skipped with a
        warning that names the file and line."""
        lists = 0
        for path in sorted(self.wal_dir.glob("impressions-*" + WAL_SUFFIX)):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live log (this or another process) still writes it
                stem = path.name[: -len(WAL_SUFFIX)]
                columns, n_lists = self._read_segment(path)
                target = stem + ".parquet"
                if n_lists and not self._store.exists(target):
                    self._write(columns, stem)
                    self.rows_replayed += len(columns["item_id"])
                    self.lists_replayed += n_lists
                    lists += n_lists
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        if lists:
            log.warning(
                "replayed %d served lists from %s into %s", lists, self.wal_dir, self.directory
            )
        return lists

    def _read_segment(self, path: Path) -> tuple[dict[str, list[Any]], int]:
        columns, n_lists = _empty(), 0
        with open(path, "rb") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    _extend(columns, json.loads(line))
                    n_lists += 1
                except (ValueError, KeyError, TypeError) as exc:
                    self.lines_skipped += 1
                    log.warning("%s line %d: not a served list, skipped (%s)", path, lineno, exc)
        return columns, n_lists

    # -- shutdown ---------------------------------------------------------------------

    def flush(self) -> None:
        """Write what is buffered now (also on shutdown); returns when it is on disk."""
        with self._lock:
            self._rotate_locked()
        self._drain()

    def close(self) -> None:
        """Flush the remainder to Parquet and stop the threads."""
        self.flush()
        with self._lock:
            self._closed = True
        self._wake.set()
        self._stop_sync.set()
        self._writer.join(timeout=30)
        if self._syncer is not None:
            self._syncer.join(timeout=30)


class _NoSegment:
    """Stands in for a segment that could not be written: a name and nothing to delete."""

    def __init__(self, stem: str):
        self.stem = stem

    def remove(self) -> None:
        pass


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
