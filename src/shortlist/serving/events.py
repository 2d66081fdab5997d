"""The events log: what users did with served lists, durable before it is acknowledged.

An event names a served list by the response's `request_id` and one of its items; the
item's position comes from the list as it was served. Kinds: `click`, `watch` (with
`seconds`), `skip`, `dismiss`, or any other lower-case name as a custom kind that carries
its own `weight`. `check_events` decides, for a whole batch at once, whether every event
refers to a list this server remembers (`ServedLists`), names an item of that list, and
arrives within `feedback.lateness_seconds` of the serving; one bad event refuses the
batch, so nothing of it is written.

Durability is the impressions log's (`shortlist.serving.wal`): `EventLog.append`
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

import io
import logging
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from shortlist.serving.wal import WriteAheadLog
from shortlist.storage import is_remote, open_store

if TYPE_CHECKING:
    from shortlist.config import Params

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


def events_dir(params: Params) -> str:
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


class EventLog(WriteAheadLog):
    """Thread-safe events log: one write-ahead JSON line per accepted batch, rotated
    into Parquet files (see the module docstring)."""

    prefix = FILE_PREFIX[:-1]
    schema = SCHEMA
    record_name = "event batch"
    records_name = "event batches"
    dir_setting = "feedback.events_dir"
    wal_dir_setting = "feedback.events_wal_dir"

    @property
    def batches_replayed(self) -> int:
        return self.records_replayed

    def _extend(self, columns: dict[str, list[Any]], record: Any) -> int:
        rows = record["events"]
        for c in COLUMNS:
            columns[c].extend(r[c] for r in rows)
        return len(rows)

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Log one accepted batch: in the write-ahead file (kernel) when this returns,
        and synced to disk first when fsync_ms is 0. Raises EventLogUnavailable when the
        write-ahead file cannot take it; then none of it is logged."""
        if not rows:
            return
        record = {"events": rows}
        line = self._encode(record)
        with self._lock:
            if self._closed:
                raise EventLogUnavailable("the events log is closed")
            try:
                self._write_ahead_locked(line)
            except OSError as exc:
                self.wal_errors += 1
                # A partly written line may end the segment: retire it with the rows it
                # holds whole, so the next batch starts a clean file.
                self._rotate_locked()
                self._wake.set()
                raise EventLogUnavailable(
                    f"could not write the events write-ahead file: {exc}"
                ) from exc
            self._add_locked(record)
        if self.fsync_ms <= 0:
            self.sync()


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
