"""A durable append-only log: write-ahead JSON lines, rotated into Parquet files.

The impressions log (`shortlist.serving.impressions`) and the events log
(`shortlist.serving.events`) share this machinery and differ only in their records, their
Parquet schema, and what a refused write means to the caller.

Each record is one JSON line, written with a plain `write()` to the current segment
under `wal_dir` before `append` returns: from then on it is in the kernel, so killing the
process (even kill -9) loses none of it. A sync thread `fdatasync`s every segment written
since the last sync every `fsync_ms` (0: `append` syncs before it returns), which bounds
what a machine crash or power loss can take. Rows are also kept in memory; a background
writer turns every `rotate_rows` rows (and, on a quiet server, whatever is buffered every
`flush_seconds`) into one Parquet file under `directory` (a directory or s3://), named
after its segment, and only then deletes the segment. A new log replays the segments a
dead process left behind before it serves; a segment and its Parquet file share one name
stem, so a crash between writing the file and deleting the segment never writes a record
twice. A live log holds an exclusive `flock` on its segment, so another process sharing
the directory never replays it. Files are named `<prefix>-<unix ms>-<pid>-<token>-<seq>`.
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

WAL_SUFFIX = ".jsonl"
DEFAULT_WAL_SUBDIR = ".wal"  # inside a local log directory; Parquet readers skip dot-dirs


class Segment:
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


class NoSegment:
    """Stands in for a segment that could not be written: a name and nothing to delete."""

    def __init__(self, stem: str):
        self.stem = stem

    def remove(self) -> None:
        pass


def sync_dir(path: Path) -> None:
    """fsync a directory, so the entries of files created in it survive a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteAheadLog:
    """Thread-safe write-ahead log rotated into Parquet files (see the module docstring).

    A subclass names its files (`prefix`), its Parquet `schema`, what one record is called
    in log messages (`record_name`, plural `records_name`), the settings that name its directories, and how a
    decoded record becomes rows (`_extend`); its `append` encodes a record with `_encode`,
    writes it with `_write_ahead_locked` and adds its rows with `_add_locked`."""

    prefix: str
    schema: pa.Schema
    record_name: str
    records_name: str
    dir_setting: str
    wal_dir_setting: str

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
        self.fsync_ms = fsync_ms  # 0: append syncs before it returns
        if wal_dir is None:
            if is_remote(directory):
                raise ValueError(
                    f"{self.wal_dir_setting} must name a local directory when "
                    f"{self.dir_setting} is remote ({directory})"
                )
            wal_dir = os.path.join(directory, DEFAULT_WAL_SUBDIR)
        if is_remote(wal_dir):
            raise ValueError(f"{self.wal_dir_setting} must be local, got {wal_dir}")
        self.wal_dir = Path(wal_dir)
        self.wal_dir.mkdir(parents=True, exist_ok=True)
        self._store = open_store(directory, endpoint_url=endpoint_url)
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._columns = self._empty()
        self._rows = 0
        self._segment: Segment | None = None
        self._live: list[Segment] = []  # current + rotated, not yet in Parquet
        self._pending: list[tuple[dict[str, list[Any]], Segment | NoSegment]] = []
        self._wake = threading.Event()
        self._stop_sync = threading.Event()
        self._closed = False
        self._seq = 0
        self._token = os.urandom(3).hex()
        self.files_written = 0
        self.rows_written = 0
        self.records_replayed = 0
        self.rows_replayed = 0
        self.lines_skipped = 0
        self.wal_errors = 0
        self.replay()
        self._writer = threading.Thread(target=self._run, name=f"{self.prefix}-writer", daemon=True)
        self._writer.start()
        self._syncer: threading.Thread | None = None
        if fsync_ms > 0:
            self._syncer = threading.Thread(
                target=self._sync_loop, name=f"{self.prefix}-fsync", daemon=True
            )
            self._syncer.start()

    # -- what a subclass defines ------------------------------------------------------

    def _extend(self, columns: dict[str, list[Any]], record: Any) -> int:
        """Add the rows of one decoded record to `columns`; returns the number of rows.
        Raises ValueError, KeyError or TypeError for a record that is not one."""
        raise NotImplementedError

    # -- the request path -------------------------------------------------------------

    def _empty(self) -> dict[str, list[Any]]:
        return {c: [] for c in self.schema.names}

    @staticmethod
    def _encode(record: Any) -> bytes:
        """One record as its write-ahead line (compact JSON, newline-terminated)."""
        return json.dumps(record, separators=(",", ":")).encode() + b"\n"

    def _write_ahead_locked(self, line: bytes) -> Segment:
        """Write `line` to the current segment (opening one); raises OSError when the
        write-ahead file refuses it."""
        if self._segment is None:
            self._segment = Segment(self.wal_dir / (self._next_stem() + WAL_SUFFIX))
            self._live.append(self._segment)
        self._segment.write(line)
        self._segment.dirty = True
        return self._segment

    def _add_locked(self, record: Any) -> None:
        """Keep the record's rows in memory, rotating them out at `rotate_rows`."""
        self._rows += self._extend(self._columns, record)
        if self._rows >= self.rotate_rows:
            self._rotate_locked()
            self._wake.set()

    def _next_stem(self) -> str:
        # The instance token keeps two logs of one process (same pid, same millisecond,
        # both at seq 1) from ever choosing the same name.
        self._seq += 1
        ms = int(time.time() * 1000)
        return f"{self.prefix}-{ms}-{os.getpid()}-{self._token}-{self._seq:06d}"

    def _rotate_locked(self) -> None:
        """Hand the buffered rows and their segment to the writer; the next record starts
        a new segment. A segment without a whole record (a failed first write) is dropped."""
        seg = self._segment
        self._segment = None
        if self._rows:
            # without a segment (the write-ahead file failed): a name for the Parquet file
            self._pending.append((self._columns, seg or NoSegment(self._next_stem())))
            self._columns = self._empty()
            self._rows = 0
        elif seg is not None:
            self._live.remove(seg)
            seg.remove()

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
                sync_dir(self.wal_dir)
            for s in dirty:
                s.sync()
        except OSError:
            log.exception("could not sync the %s write-ahead file in %s", self.prefix, self.wal_dir)

    def _run(self) -> None:
        while True:
            woke = self._wake.wait(self.flush_seconds or None)
            self._wake.clear()
            if not woke:  # the flush timer: write what is buffered, however little
                with self._lock:
                    if self._rows:
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
                    log.exception(
                        "could not write a %s Parquet file to %s", self.prefix, self.directory
                    )
                    continue
                with self._lock:
                    if seg in self._live:
                        self._live.remove(seg)
                seg.remove()

    def _write(self, batch: dict[str, list[Any]], stem: str) -> None:
        table = pa.Table.from_pydict(batch, schema=self.schema)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self._store.write_bytes(stem + ".parquet", buf.getvalue())
        self.files_written += 1
        self.rows_written += table.num_rows

    # -- recovery ---------------------------------------------------------------------

    def replay(self) -> int:
        """Turn write-ahead segments no live log holds into Parquet; returns records replayed.

        A line that does not parse (only a power loss can tear one) is skipped with a
        warning that names the file and line."""
        records = 0
        for path in sorted(self.wal_dir.glob(f"{self.prefix}-*{WAL_SUFFIX}")):
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
                columns, rows, n = self._read_segment(path)
                if n and not self._store.exists(stem + ".parquet"):
                    self._write(columns, stem)
                    self.rows_replayed += rows
                    self.records_replayed += n
                    records += n
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        if records:
            log.warning(
                "replayed %d %s from %s into %s",
                records,
                self.records_name,
                self.wal_dir,
                self.directory,
            )
        return records

    def _read_segment(self, path: Path) -> tuple[dict[str, list[Any]], int, int]:
        """The rows of a segment's whole records: (columns, rows, records)."""
        columns, rows, n = self._empty(), 0, 0
        with open(path, "rb") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                staged = self._empty()
                try:
                    rows += self._extend(staged, json.loads(line))  # the whole record, or none
                except (ValueError, KeyError, TypeError) as exc:
                    self.lines_skipped += 1
                    log.warning(
                        "%s line %d: not a %s, skipped (%s)", path, lineno, self.record_name, exc
                    )
                    continue
                for c, values in staged.items():
                    columns[c].extend(values)
                n += 1
        return columns, rows, n

    # -- shutdown ---------------------------------------------------------------------

    def flush(self) -> None:
        """Write what is buffered now (also on shutdown); returns when it is in Parquet."""
        with self._lock:
            if self._rows:
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
