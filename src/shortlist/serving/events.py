"""The events log: what users did with served lists, durable before it is acknowledged.

An event names a served list by the response's `request_id` and one of its items; the
item's position comes from the list as it was served. Kinds: `click`, `watch` (with
`seconds`), `skip`, `dismiss`, or any other lower-case name as a custom kind that carries
its own `weight`. `check_events` decides, for a whole batch at once, whether every event
refers to a list this server remembers (`ServedLists`), names an item of that list, and
arrives within `feedback.lateness_seconds` of the serving; one bad event refuses the
batch, so nothing of it is written.

Durability follows the impressions log (`shortlist.serving.impressions`): `EventLog.append`
writes an accepted batch as ONE JSON line to a local write-ahead segment before the
request answers, so killing the process (even kill -9) loses nothing acknowledged; a
sync thread `fdatasync`s every `feedback.events_fsync_ms` (0: before answering), which
bounds what a power loss can take. A write-ahead failure (a full disk) is an error for
the request (503): an event is acknowledged only once it is in the kernel. A background
writer turns every `feedback.events_rotate_rows` rows (and whatever is buffered every
`feedback.events_flush_seconds`) into one Parquet file under `feedback.events_dir`, named
after its segment, then deletes the segment; a new log replays segments a dead process
left behind, and a torn last line (only a power loss makes one) drops exactly one batch
that was never synced.

Files are named `events-<unix ms>-<pid>-<token>-<seq>.parquet`. Columns: event_id (the
client's, else a server uuid; the join drops repeats of an id), request_id, item_id,
position (0-based, from the impression), kind, value (watch seconds or custom weight,
else null), timestamp (server receipt, unix seconds), occurred_at (the client's clock,
optional), served_at (when the list was served).
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shortlist.serving.impressions import WAL_SUFFIX, _NoSegment, _Segment, _sync_dir
from shortlist.storage import is_remote, open_store

log = logging.getLogger(__name__)

BUILTIN_KINDS = ("click", "watch", "skip", "dismiss")
KIND_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"

SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("timestamp", pa.float64(), nullable=False),
        pa.field("occurred_at", pa.float64()),
        pa.field("served_at", pa.float64(), nullable=False),
    ]
)
COLUMNS = SCHEMA.names
FILE_PREFIX = "events-"
_STEM = re.compile(
    r"^(?P<prefix>[a-z]+)-(?P<ms>\d+)-(?P<pid>\d+)-(?P<token>[0-9a-f]+)-(?P<seq>\d+)$"
)

# Reasons an event is refused (the label of shortlist_events_rejected_total).
UNKNOWN_REQUEST = "unknown_request"
ITEM_NOT_SERVED = "item_not_in_list"
TOO_LATE = "too_late"
IN_REFUSED_BATCH = "in_refused_batch"


def event_weight(
    kind: str, value: float | None, *, click: float, watch_seconds_per_unit: float
) -> float:
    """The engagement weight of one event: click -> `click`, watch -> seconds / unit,
    skip and dismiss -> 0, a custom kind -> its own weight."""
    if kind == "click":
        return click
    if kind == "watch":
        return float(value or 0.0) / watch_seconds_per_unit
    if kind in ("skip", "dismiss"):
        return 0.0
    return float(value or 0.0)


def events_dir(params: Any) -> str:
    """feedback.events_dir, else `events` beside serving.impressions_dir (so moving the
    impressions moves the events with them)."""
    if params.feedback.events_dir:
        return params.feedback.events_dir
    base = params.serving.impressions_dir.rstrip("/")
    if is_remote(base):
        bucket, _, prefix = base[len("s3://") :].partition("/")
        if not prefix:
            raise ValueError(
                f"serving.impressions_dir is a bucket root ({base}): set feedback.events_dir"
            )
        return f"s3://{bucket}/{prefix.rpartition('/')[0] + '/' if '/' in prefix else ''}events"
    return os.path.join(os.path.dirname(base), "events")


# -- which lists events may refer to ------------------------------------------------


class ServedLists:
    """request_id -> (served_at, item ids) of the lists this server served recently.

    Entries are kept for twice the lateness window, so an event that is too late is told
    so rather than "unknown"; at most `max_lists` are kept (the oldest go first). Lists
    served by another process are unknown here: send events to the server that served."""

    def __init__(self, lateness_seconds: float, max_lists: int):
        self.lateness = lateness_seconds
        self.max_lists = max_lists
        self._lists: OrderedDict[str, tuple[float, tuple[str, ...]]] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted_by_count = 0

    def __len__(self) -> int:
        return len(self._lists)

    def add(self, request_id: str, served_at: float, item_ids: list[str]) -> None:
        with self._lock:
            self._lists[request_id] = (served_at, tuple(item_ids))
            self._evict_locked(served_at)

    def get(self, request_id: str) -> tuple[float, tuple[str, ...]] | None:
        with self._lock:
            return self._lists.get(request_id)

    def _evict_locked(self, now: float) -> None:
        lists = self._lists
        while len(lists) > self.max_lists:
            lists.popitem(last=False)
            self.evicted_by_count += 1
        horizon = now - 2 * self.lateness
        while lists:
            first = next(iter(lists.values()))
            if first[0] >= horizon:
                break
            lists.popitem(last=False)

    def load(
        self, directory: str, endpoint_url: str | None = None, now: float | None = None
    ) -> int:
        """Add the lists of the impressions log at `directory` served within the window.

        A restarted server thereby still accepts events for lists its predecessor served
        (the impressions log replays its write-ahead files into Parquet before this runs).
        Only files that can hold such lists are read: within one log instance (pid and
        token) a file's rows are older than the next file's name."""
        now = time.time() if now is None else now
        horizon = now - 2 * self.lateness
        store = open_store(directory, endpoint_url=endpoint_url)
        keys = [k for k in store.list() if "/" not in k and k.endswith(".parquet")]
        wanted = log_files_since(keys, "impressions", horizon)
        columns = ["request_id", "timestamp", "item_id", "position"]
        frames = []
        for key in wanted:
            try:
                frames.append(pq.read_table(io.BytesIO(store.read_bytes(key)), columns=columns))
            except Exception:  # noqa: BLE001 - an unreadable old file must not stop serving
                log.exception("could not read impressions file %s/%s", directory, key)
        if not frames:
            return 0
        rows = pa.concat_tables(frames).to_pandas()
        rows = rows[rows["timestamp"] >= horizon].sort_values(
            ["timestamp", "request_id", "position"]
        )
        n = 0
        for request_id, group in rows.groupby("request_id", sort=False):
            self.add(str(request_id), float(group["timestamp"].iloc[0]), group["item_id"].tolist())
            n += 1
        return n


def log_files_since(keys: list[str], prefix: str, horizon: float) -> list[str]:
    """The log files (named `<prefix>-<ms>-<pid>-<token>-<seq>.parquet`) that may hold
    rows at or after `horizon` (unix seconds)."""
    groups: dict[tuple[str, str], list[tuple[int, int, str]]] = {}
    for key in keys:
        m = _STEM.match(key[: -len(".parquet")])
        if m is None or m["prefix"] != prefix:
            continue
        groups.setdefault((m["pid"], m["token"]), []).append((int(m["seq"]), int(m["ms"]), key))
    slack_ms = 60_000  # a row's clock read may precede its file's name by a little
    out = []
    for files in groups.values():
        files.sort()
        for i, (_seq, _ms, key) in enumerate(files):
            last = i == len(files) - 1
            if last or files[i + 1][1] + slack_ms >= horizon * 1000:
                out.append(key)
    return sorted(out)


@dataclass
class Problem:
    """Why one event of a batch was refused."""

    index: int
    request_id: str
    item_id: str
    reason: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "request_id": self.request_id,
            "item_id": self.item_id,
            "reason": self.reason,
            "message": self.message,
        }


class EventsRefused(Exception):
    """A batch with at least one bad event: nothing of it is written."""

    def __init__(self, problems: list[Problem], size: int):
        self.problems = problems
        self.size = size
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"event {first.index}: {first.message}{more}; nothing was written")


def check_events(
    events: list[Any], served: ServedLists, *, lateness_seconds: float, now: float
) -> list[dict[str, Any]]:
    """The rows to log for `events` (objects with request_id, item_id, kind, seconds,
    weight, event_id, occurred_at), or EventsRefused naming every bad one."""
    rows: list[dict[str, Any]] = []
    problems: list[Problem] = []
    for i, ev in enumerate(events):
        found = served.get(ev.request_id)
        if found is None:
            msg = f"request_id {ev.request_id!r} is not a list this server served"
            if served.evicted_by_count:
                msg += f" (or one older than the {served.max_lists} lists it remembers)"
            problems.append(Problem(i, ev.request_id, ev.item_id, UNKNOWN_REQUEST, msg))
            continue
        served_at, item_ids = found
        late = now - served_at
        if late > lateness_seconds:
            msg = (
                f"event for request {ev.request_id!r} arrived {late:.0f} s after the list was "
                f"served, later than feedback.lateness_seconds ({lateness_seconds:g} s)"
            )
            problems.append(Problem(i, ev.request_id, ev.item_id, TOO_LATE, msg))
            continue
        try:
            position = item_ids.index(ev.item_id)
        except ValueError:
            msg = f"item {ev.item_id!r} was not in the list served as request {ev.request_id!r}"
            problems.append(Problem(i, ev.request_id, ev.item_id, ITEM_NOT_SERVED, msg))
            continue
        value = ev.seconds if ev.kind == "watch" else ev.weight
        rows.append(
            {
                "event_id": ev.event_id or uuid.uuid4().hex,
                "request_id": ev.request_id,
                "item_id": ev.item_id,
                "position": position,
                "kind": ev.kind,
                "value": None if value is None else float(value),
                "timestamp": now,
                "occurred_at": ev.occurred_at,
                "served_at": served_at,
            }
        )
    if problems:
        raise EventsRefused(problems, len(events))
    return rows


# -- the durable log ------------------------------------------------------------------


class EventLogUnavailable(Exception):
    """The write-ahead file refused a batch (e.g. a full disk): it was not accepted."""


def _empty() -> dict[str, list[Any]]:
    return {c: [] for c in COLUMNS}


def _extend(columns: dict[str, list[Any]], rows: list[dict[str, Any]]) -> int:
    for c in COLUMNS:
        columns[c].extend(r[c] for r in rows)
    return len(rows)


class EventLog:
    """Thread-safe events log: one write-ahead JSON line per accepted batch, rotated
    into Parquet files (see the module docstring)."""

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
        self.flush_seconds = flush_seconds
        self.fsync_ms = fsync_ms
        if wal_dir is None:
            if is_remote(directory):
                raise ValueError(
                    f"feedback.events_wal_dir must name a local directory when "
                    f"feedback.events_dir is remote ({directory})"
                )
            wal_dir = os.path.join(directory, ".wal")
        if is_remote(wal_dir):
            raise ValueError(f"feedback.events_wal_dir must be local, got {wal_dir}")
        self.wal_dir = Path(wal_dir)
        self.wal_dir.mkdir(parents=True, exist_ok=True)
        self._store = open_store(directory, endpoint_url=endpoint_url)
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._columns = _empty()
        self._rows = 0
        self._segment: _Segment | None = None
        self._live: list[_Segment] = []
        self._pending: list[tuple[dict[str, list[Any]], Any]] = []
        self._wake = threading.Event()
        self._stop_sync = threading.Event()
        self._closed = False
        self._seq = 0
        self._token = os.urandom(3).hex()
        self.files_written = 0
        self.rows_written = 0
        self.batches_replayed = 0
        self.rows_replayed = 0
        self.lines_skipped = 0
        self.wal_errors = 0
        self.replay()
        self._writer = threading.Thread(target=self._run, name="events-writer", daemon=True)
        self._writer.start()
        self._syncer: threading.Thread | None = None
        if fsync_ms > 0:
            self._syncer = threading.Thread(
                target=self._sync_loop, name="events-fsync", daemon=True
            )
            self._syncer.start()

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Log one accepted batch: in the write-ahead file (kernel) when this returns,
        and synced to disk first when fsync_ms is 0. Raises EventLogUnavailable when the
        write-ahead file cannot take it; then none of it is logged."""
        if not rows:
            return
        line = json.dumps({"events": rows}, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            if self._closed:
                raise EventLogUnavailable("the events log is closed")
            try:
                if self._segment is None:
                    self._segment = _Segment(self.wal_dir / (self._next_stem() + WAL_SUFFIX))
                    self._live.append(self._segment)
                self._segment.write(line)
                self._segment.dirty = True
            except OSError as exc:
                self.wal_errors += 1
                # A partly written line may end the segment: retire it with the rows it
                # holds whole, so the next batch starts a clean file.
                self._rotate_locked()
                self._segment = None
                self._wake.set()
                raise EventLogUnavailable(
                    f"could not write the events write-ahead file: {exc}"
                ) from exc
            self._rows += _extend(self._columns, rows)
            if self._rows >= self.rotate_rows:
                self._rotate_locked()
                self._wake.set()
        if self.fsync_ms <= 0:
            self.sync()

    def _next_stem(self) -> str:
        self._seq += 1
        ms = int(time.time() * 1000)
        return f"{FILE_PREFIX}{ms}-{os.getpid()}-{self._token}-{self._seq:06d}"

    def _rotate_locked(self) -> None:
        seg = self._segment
        self._segment = None
        if self._rows:
            self._pending.append((self._columns, seg or _NoSegment(self._next_stem())))
            self._columns = _empty()
            self._rows = 0
        elif seg is not None:  # nothing whole in it (a failed first write): drop it
            self._live.remove(seg)
            seg.remove()

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
            log.exception("could not sync the events write-ahead file in %s", self.wal_dir)

    def _run(self) -> None:
        while True:
            woke = self._wake.wait(self.flush_seconds or None)
            self._wake.clear()
            if not woke:
                with self._lock:
                    if self._rows:
                        self._rotate_locked()
            self._drain()
            with self._lock:
                if self._closed and not self._pending:
                    return

    def _drain(self) -> None:
        with self._io_lock:
            while True:
                with self._lock:
                    if not self._pending:
                        return
                    batch, seg = self._pending.pop(0)
                try:
                    self._write(batch, seg.stem)
                except Exception:  # noqa: BLE001 - the segment stays; the next start replays it
                    log.exception("could not write an events file to %s", self.directory)
                    continue
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

    def replay(self) -> int:
        """Turn write-ahead segments no live log holds into Parquet; returns batches replayed."""
        batches = 0
        for path in sorted(self.wal_dir.glob(FILE_PREFIX + "*" + WAL_SUFFIX)):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live log still writes it
                stem = path.name[: -len(WAL_SUFFIX)]
                columns, n = self._read_segment(path)
                if n and not self._store.exists(stem + ".parquet"):
                    self._write(columns, stem)
                    self.rows_replayed += len(columns["event_id"])
                    self.batches_replayed += n
                    batches += n
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        if batches:
            log.warning(
                "replayed %d event batches from %s into %s", batches, self.wal_dir, self.directory
            )
        return batches

    def _read_segment(self, path: Path) -> tuple[dict[str, list[Any]], int]:
        columns, n = _empty(), 0
        with open(path, "rb") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows = json.loads(line)["events"]
                    staged = _empty()
                    _extend(staged, rows)  # the whole batch, or none of it
                except (ValueError, KeyError, TypeError) as exc:
                    self.lines_skipped += 1
                    log.warning("%s line %d: not an event batch, skipped (%s)", path, lineno, exc)
                    continue
                for c in COLUMNS:
                    columns[c].extend(staged[c])
                n += 1
        return columns, n

    def flush(self) -> None:
        """Write what is buffered now; returns when it is in a Parquet file."""
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


def read_events(directory: str, endpoint_url: str | None = None) -> pa.Table:
    """Every event in the log's Parquet files (an empty table when there are none)."""
    store = open_store(directory, endpoint_url=endpoint_url)
    keys = [
        k
        for k in store.list()
        if "/" not in k and k.startswith(FILE_PREFIX) and k.endswith(".parquet")
    ]
    tables = [pq.read_table(io.BytesIO(store.read_bytes(k)), schema=SCHEMA) for k in keys]
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()
