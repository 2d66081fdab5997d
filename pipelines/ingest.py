"""Stage `ingest`: import a source into a dataset directory (local path or s3://).

One function for the CLI, DVC and Airflow: read a MovieLens release or generic
CSV/Parquet files, write the contract's three Parquet tables and snapshot.json, and
return the snapshot manifest (its ``rows`` is a dict per table).
"""

from __future__ import annotations

from typing import Any

from shortlist.config import Params
from shortlist.data import csv_source, movielens
from shortlist.data.io import write_dataset
from shortlist.errors import ShortlistError

SOURCES = (*movielens.SOURCES, "csv")


def run(
    params: Params,
    *,
    source: str,
    path: str,
    out_dir: str,
    items_path: str | None = None,
    users_path: str | None = None,
    column_map: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Import `source` from `path` into `out_dir`; returns the snapshot manifest."""
    del params  # importers have no tunables; the argument keeps every stage's signature
    if source in movielens.SOURCES:
        if items_path or users_path or column_map:
            raise ShortlistError(f"--items/--users/--map apply to the csv source, not {source}")
        interactions, items, users = movielens.load(source, path)
        extra: dict[str, Any] = {"inputs_sha256": movielens.input_checksums(source, path)}
    elif source == "csv":
        interactions, items, users, extra = csv_source.load_csv(
            path, items_path=items_path, users_path=users_path, column_map=column_map
        )
    else:
        raise ShortlistError(f"unknown source {source!r} (one of {', '.join(SOURCES)})")
    # Whether time is real decides how the data is split (shortlist.data.split.resolve_mode).
    extra["timestamps"] = "synthetic" if "synthetic_timestamps" in extra else "real"
    return write_dataset(str(out_dir), interactions, items, users, source=source, extra=extra)
