"""Stage `feedback`: what serving showed and what users did with it -> training data.

`join` reads the impressions log (`serving.impressions_dir`) and the events log
(`feedback.events_dir`, by default beside the impressions) for one window of serving time [start, end) and writes a batch of
the data contract to `<feedback.batches_dir>/<start>-<end>/` (`batches_dir(params)`):

- `interactions.parquet`: each engaged item of a list served to a known user, with the
  time of its first engaging event and its engagement weight: clicks weigh
  `feedback.click_weight`, a watch its seconds / `feedback.watch_seconds_per_unit`, a
  custom kind its own weight; summed per shown item and capped at `feedback.max_weight`.
  Skips and dismissals weigh nothing. Anonymous lists have no user to credit.
- `exposures.parquet` (`shortlist.data.schema.EXPOSURES_SCHEMA`): every shown item,
  engaged or not, with its propensity, so that training can weight by exposure and
  off-policy estimates (`shortlist.eval.off_policy`) can be computed.
- `snapshot.json`: checksums, row counts, the window and what was read.

A window is joined only once it is closed: its end lies `feedback.lateness_seconds`
(the latest an event is accepted) plus the logs' flush intervals in the past, so no
event for it can still arrive. Then the same logs give the same bytes (rows sorted,
duplicate events by `event_id` dropped, the manifest dated by the window), and a re-run
replaces nothing.

`land` merges every batch into the dataset at `data.dir` (interactions of items the
catalog does not hold are dropped and counted; users new to it get a row without
features) in a staging directory, runs the data contract (`pipelines.validate`: a
failing merge is quarantined and `data.dir` is left as it was), and only then writes
the merged tables and exposures into `data.dir`, snapshot.json last, where the next
retrain reads them. Merging is by row identity, so landing the same batches twice adds
nothing.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from shortlist.config import Params
from shortlist.data import schema
from shortlist.data.io import (
    feature_table,
    normalise_interactions,
    read_snapshot,
    read_table,
    sha256_bytes,
    snapshot_id_of,
    table_to_bytes,
    write_snapshot_manifest,
)
from shortlist.errors import DataValidationError, ShortlistError
from shortlist.serving.events import event_weight, events_dir, log_files_since
from shortlist.storage import Store, open_store

log = logging.getLogger(__name__)

SOURCE = "feedback"
_NAME_SLACK_S = 60.0  # a row's clock read may precede its log file's name by a little


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y%m%dT%H%M%SZ")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def closed_before(params: Params, now: float) -> float:
    """Windows ending at or before this time can no longer receive events."""
    fb, s = params.feedback, params.serving
    return now - fb.lateness_seconds - max(fb.events_flush_seconds, s.impressions_flush_seconds)


def latest_window(params: Params, now: float | None = None) -> tuple[float, float]:
    """The most recent closed window [start, end) on the `feedback.window_seconds` grid."""
    now = time.time() if now is None else now
    size = params.feedback.window_seconds
    end = math.floor(closed_before(params, now) / size) * size
    return float(end - size), float(end)


def batches_dir(params: Params) -> str:
    """feedback.batches_dir, else <project.work_dir>/feedback."""
    fb = params.feedback
    return fb.batches_dir or f"{params.project.work_dir.rstrip('/')}/feedback"


def batch_name(start: float, end: float) -> str:
    return f"{_stamp(start)}-{_stamp(end)}"


# -- reading the logs -----------------------------------------------------------------


def _read_log(
    directory: str,
    prefix: str,
    since: float,
    until: float,
    columns: list[str],
    endpoint: str | None,
) -> tuple[pd.DataFrame, int]:
    """Rows of the log files that can hold rows in [since, until]; (rows, files read)."""
    store = open_store(directory, endpoint_url=endpoint)
    keys = [k for k in store.list() if "/" not in k and k.endswith(".parquet")]
    wanted = [
        k
        for k in log_files_since(keys, prefix, since)
        if int(k.split("-")[1]) / 1000.0 - _NAME_SLACK_S <= until
    ]
    tables = [pq.read_table(io.BytesIO(store.read_bytes(k)), columns=columns) for k in wanted]
    if not tables:
        return pd.DataFrame({c: [] for c in columns}), 0
    return pa.concat_tables(tables).to_pandas(), len(wanted)


def _weights(events: pd.DataFrame, params: Params) -> np.ndarray:
    fb = params.feedback
    return np.array(
        [
            event_weight(
                k,
                None if pd.isna(v) else float(v),
                click=fb.click_weight,
                watch_seconds_per_unit=fb.watch_seconds_per_unit,
            )
            for k, v in zip(events["kind"], events["value"], strict=True)
        ],
        dtype=np.float64,
    )


# -- the join -------------------------------------------------------------------------


def join(
    params: Params,
    *,
    start: float,
    end: float,
    out_dir: str | None = None,
    now: float | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Join the window [start, end) into a batch; returns its manifest (plus `path` and
    `status`: written, unchanged or replaced). An open window is an error unless `force`."""
    fb = params.feedback
    now = time.time() if now is None else now
    if end <= start:
        raise ShortlistError(f"empty window: start {_iso(start)} is not before end {_iso(end)}")
    if not force and end > closed_before(params, now):
        raise ShortlistError(
            f"window ending {_iso(end)} is still open: events may arrive until "
            f"feedback.lateness_seconds ({fb.lateness_seconds:g} s) and the logs' flush "
            "intervals have passed"
        )
    endpoint = params.storage.s3_endpoint_url
    imp_cols = ["request_id", "timestamp", "user_id", "bundle_id", "item_id", "position",
                "propensity", "policy"]  # fmt: skip
    imp, imp_files = _read_log(
        params.serving.impressions_dir, "impressions", start, end, imp_cols, endpoint
    )
    imp = imp[(imp["timestamp"] >= start) & (imp["timestamp"] < end)]
    imp = imp.sort_values(["timestamp", "request_id", "position"], kind="stable")
    imp = imp.drop_duplicates(["request_id", "position"])
    # A propensity outside (0, 1] cannot weight anything: such rows are left out, counted.
    valid = np.isfinite(imp["propensity"]) & (imp["propensity"] > 0) & (imp["propensity"] <= 1)
    invalid_propensity = int((~valid).sum())
    if invalid_propensity:
        log.warning("%d shown items with a propensity outside (0, 1] left out", invalid_propensity)
    imp = imp[valid].reset_index(drop=True)

    ev_cols = ["event_id", "request_id", "item_id", "kind", "value", "timestamp", "served_at"]
    ev, ev_files = _read_log(
        events_dir(params), "events", start, end + fb.lateness_seconds, ev_cols, endpoint
    )
    # An event belongs to the window of its list's impression (the list's clock read in
    # the response and in the log differ by microseconds; membership avoids a seam).
    ev = ev.sort_values(["timestamp", "event_id"], kind="stable").drop_duplicates("event_id")
    known = ev["request_id"].isin(set(imp["request_id"]))
    in_window = (ev["served_at"] >= start) & (ev["served_at"] < end)
    orphans = int((in_window & ~known).sum())
    ev = ev[known].copy()
    ev["w"] = _weights(ev, params)
    ev["engaging_ts"] = ev["timestamp"].where(ev["w"] > 0)
    per_item = ev.groupby(["request_id", "item_id"], sort=False).agg(
        weight=("w", "sum"),
        first_engaged=("engaging_ts", "min"),
        skipped=("kind", lambda k: bool((k == "skip").any())),
        dismissed=("kind", lambda k: bool((k == "dismiss").any())),
    )
    exp = imp.merge(per_item.reset_index(), on=["request_id", "item_id"], how="left")
    exp["weight"] = exp["weight"].fillna(0.0).clip(upper=fb.max_weight)
    exp["engaged"] = exp["weight"] > 0
    exp["skipped"] = exp["skipped"].astype("boolean").fillna(False).astype(bool)
    exp["dismissed"] = exp["dismissed"].astype("boolean").fillna(False).astype(bool)
    exposures = pd.DataFrame(
        {
            "request_id": exp["request_id"].astype(str),
            schema.USER_ID: exp["user_id"].astype(object).where(exp["user_id"].notna(), None),
            schema.ITEM_ID: exp["item_id"].astype(str),
            schema.TIMESTAMP: np.floor(exp["timestamp"]).astype("int64"),
            "position": exp["position"].astype("int32"),
            "propensity": exp["propensity"].astype("float64"),
            "policy": exp["policy"].astype(str),
            "bundle_id": exp["bundle_id"].astype(str),
            "engaged": exp["engaged"].astype(bool),
            schema.WEIGHT: exp["weight"].astype("float32"),
            "skipped": exp["skipped"],
            "dismissed": exp["dismissed"],
        }
    )
    credited = exp[exp["engaged"] & exp["user_id"].notna()]
    inter = pd.DataFrame(
        {
            schema.USER_ID: credited["user_id"].astype(str),
            schema.ITEM_ID: credited["item_id"].astype(str),
            schema.TIMESTAMP: np.floor(credited["first_engaged"]).astype("int64"),
            schema.WEIGHT: credited["weight"].astype("float64"),
        }
    )
    keys = [schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP]
    inter = inter.groupby(keys, as_index=False, sort=True)[schema.WEIGHT].sum()
    inter[schema.WEIGHT] = inter[schema.WEIGHT].clip(upper=fb.max_weight)

    blobs = {
        schema.INTERACTIONS: table_to_bytes(
            normalise_interactions(inter), schema.INTERACTIONS_SCHEMA
        ),
        schema.EXPOSURES: table_to_bytes(
            pa.Table.from_pandas(exposures, preserve_index=False), schema.EXPOSURES_SCHEMA
        ),
    }
    stats = {
        "window": {"start": _iso(start), "end": _iso(end)},
        "lists": int(imp["request_id"].nunique()),
        "exposures": len(exposures),
        "engaged": int(exposures["engaged"].sum()),
        "anonymous_engaged": int((exp["engaged"] & exp["user_id"].isna()).sum()),
        "events": len(ev),
        "events_without_impression": orphans,
        "invalid_propensity": invalid_propensity,
        "impression_files": imp_files,
        "event_files": ev_files,
    }
    name = batch_name(start, end)
    where = out_dir or f"{batches_dir(params).rstrip('/')}/{name}"
    return _write_batch(where, blobs, stats, created_at=_iso(end))


def _write_batch(
    where: str, blobs: dict[str, bytes], stats: dict[str, Any], created_at: str
) -> dict[str, Any]:
    store = open_store(where)
    checksums = {k: sha256_bytes(v) for k, v in blobs.items()}
    previous = read_snapshot(where)
    if previous.get("snapshot_id") == snapshot_id_of(checksums) and all(
        store.exists(k) for k in blobs
    ):
        return {**previous, "path": where, "status": "unchanged"}
    for key, data in blobs.items():
        store.write_bytes(key, data)
    rows = {k: pq.read_metadata(io.BytesIO(v)).num_rows for k, v in blobs.items()}
    manifest = write_snapshot_manifest(
        store, checksums, SOURCE, extra={"created_at": created_at, **stats}, rows=rows
    )
    status = "replaced" if previous else "written"
    return {**manifest, "path": where, "status": status}


# -- landing ----------------------------------------------------------------------------


def _batches(store: Store) -> list[str]:
    names = {k.split("/")[0] for k in store.list() if k.endswith("/" + schema.SNAPSHOT)}
    return sorted(names)


def land(
    params: Params, *, data_dir: str | None = None, batches_root: str | None = None
) -> dict[str, Any]:
    """Merge every feedback batch into `data_dir` (default data.dir) through the data
    contract; returns what was merged. Raises DataValidationError when the merge fails
    validation (it is quarantined; `data_dir` is unchanged)."""
    from pipelines import validate

    endpoint = params.storage.s3_endpoint_url
    data_dir = str(data_dir or params.data.dir)
    batches_root = str(batches_root or batches_dir(params))
    base_store = open_store(data_dir, endpoint_url=endpoint)
    base_snapshot = read_snapshot(data_dir)
    if not base_snapshot:
        raise ShortlistError(f"no dataset at {data_dir} to land feedback into")
    inter = read_table(base_store, schema.INTERACTIONS)
    items = read_table(base_store, schema.ITEMS)
    users = read_table(base_store, schema.USERS)
    has_exposures = base_store.exists(schema.EXPOSURES)
    base_exp = read_table(base_store, schema.EXPOSURES) if has_exposures else None

    fb_store = open_store(batches_root, endpoint_url=endpoint)
    names = _batches(fb_store)
    fb_inter = [read_table(fb_store, f"{n}/{schema.INTERACTIONS}") for n in names]
    fb_exp = [read_table(fb_store, f"{n}/{schema.EXPOSURES}") for n in names]
    new = pd.concat(fb_inter, ignore_index=True) if fb_inter else inter.iloc[:0]
    unknown_item = ~new[schema.ITEM_ID].isin(set(items[schema.ITEM_ID].astype(str)))
    keys = [schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP]
    merged = pd.concat([normalise_interactions(inter), normalise_interactions(new[~unknown_item])])
    merged = merged.drop_duplicates(keys, keep="first").reset_index(drop=True)
    added = len(merged) - len(inter)

    known_users = set(users[schema.USER_ID].astype(str))
    new_users = sorted(set(merged[schema.USER_ID]) - known_users)
    if new_users:
        users = pd.concat([users, pd.DataFrame({schema.USER_ID: new_users})], ignore_index=True)
    exposures_parts = ([base_exp] if base_exp is not None else []) + fb_exp
    exposures = (
        pd.concat(exposures_parts, ignore_index=True).drop_duplicates(["request_id", "position"])
        if exposures_parts
        else None
    )
    added_exposures = (0 if exposures is None else len(exposures)) - (
        0 if base_exp is None else len(base_exp)
    )
    summary = {
        "data_dir": data_dir,
        "batches": len(names),
        "interactions_added": added,
        "unknown_item_interactions_dropped": int(unknown_item.sum()),
        "users_added": len(new_users),
        "exposures_added": added_exposures,
    }
    if added == 0 and added_exposures == 0:
        return {**summary, "landed": False, "reason": "nothing new"}

    blobs = {
        schema.INTERACTIONS: table_to_bytes(merged, schema.INTERACTIONS_SCHEMA),
        schema.ITEMS: base_store.read_bytes(schema.ITEMS),
        schema.USERS: table_to_bytes(feature_table(users, schema.USER_REQUIRED))
        if new_users
        else base_store.read_bytes(schema.USERS),
    }
    if exposures is not None:
        blobs[schema.EXPOSURES] = table_to_bytes(
            pa.Table.from_pandas(exposures, preserve_index=False), schema.EXPOSURES_SCHEMA
        )
    checksums = {k: sha256_bytes(v) for k, v in blobs.items()}
    carried = {
        k: v
        for k, v in base_snapshot.items()
        if k not in ("snapshot_id", "checksums", "rows", "created_at", "feedback")
    }
    extra = {**carried, "feedback": {"batches": names, "interactions_added": added}}
    staging = f"{params.project.work_dir.rstrip('/')}/feedback-landing/{snapshot_id_of(checksums)}"
    stage_store = open_store(staging, endpoint_url=endpoint)
    for key, data in blobs.items():
        stage_store.write_bytes(key, data)
    rows = {k: pq.read_metadata(io.BytesIO(v)).num_rows for k, v in blobs.items()}
    manifest = write_snapshot_manifest(
        stage_store, checksums, str(base_snapshot.get("source", SOURCE)), extra=extra, rows=rows
    )
    report = validate.run(params, data_dir=staging)
    if not report.success:
        raise DataValidationError(
            f"the merge of {len(names)} feedback batches into {data_dir} failed the data "
            f"contract (quarantined at {report.quarantine_path}); {data_dir} is unchanged: "
            + report.summary().splitlines()[0]
        )
    # The tables first, snapshot.json last: a reader checks the tables against it.
    for key, data in blobs.items():
        base_store.write_bytes(key, data)
    base_store.write_bytes(schema.SNAPSHOT, stage_store.read_bytes(schema.SNAPSHOT))
    stage_store.delete_prefix("")
    return {**summary, "landed": True, "snapshot_id": manifest["snapshot_id"]}


def pending_windows(params: Params, now: float | None = None) -> list[tuple[float, float]]:
    """The closed windows to join now: those after the newest batch in
    `feedback.batches_dir` up to the latest closed one, oldest first and at most
    `feedback.max_catch_up_windows` (the newest of them); only the latest closed window
    when no batch exists yet."""
    fb = params.feedback
    latest_start, latest_end = latest_window(params, now)
    store = open_store(batches_dir(params), endpoint_url=params.storage.s3_endpoint_url)
    ends = [_parse_stamp(name.split("-")[1]) for name in _batches(store)]
    ends = [e for e in ends if e is not None]
    if not ends:
        return [(latest_start, latest_end)]
    newest = max(ends)
    windows = []
    end = latest_end
    while end - fb.window_seconds >= newest and len(windows) < fb.max_catch_up_windows:
        windows.append((end - fb.window_seconds, end))
        end -= fb.window_seconds
    return windows[::-1] or [(latest_start, latest_end)]


def _parse_stamp(text: str) -> float | None:
    try:
        return datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def run(
    params: Params,
    *,
    start: float | None = None,
    end: float | None = None,
    now: float | None = None,
    land_batches: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """`shortlist feedback` and the DAG: join the given window, or else every pending
    closed window (`pending_windows`), then optionally land every batch into data.dir."""
    if end is not None:
        windows = [(start if start is not None else end - params.feedback.window_seconds, end)]
    else:
        windows = pending_windows(params, now)
    out: dict[str, Any] = {
        "batches": [join(params, start=s, end=e, now=now, force=force) for s, e in windows]
    }
    if land_batches:
        out["land"] = land(params)
    return out


def summary_line(result: dict[str, Any]) -> str:
    parts = [
        f"{b['window']['start']}..{b['window']['end']}: {b['lists']} lists, "
        f"{b['exposures']} exposures, {b['engaged']} engaged, {b['events']} events -> "
        f"{b['path']} ({b['status']})"
        for b in result["batches"]
    ]
    line = "feedback " + "; ".join(parts)
    if "land" in result:
        land_ = result["land"]
        line += (
            f"; landed {land_['interactions_added']} interactions into {land_['data_dir']}"
            if land_["landed"]
            else f"; nothing new to land into {land_['data_dir']}"
        )
    return line


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2, default=str)


def parse_time(text: str | None) -> float | None:
    """Unix seconds, or an ISO 8601 time (UTC unless it names its offset)."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ShortlistError(f"{text!r} is neither unix seconds nor an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
