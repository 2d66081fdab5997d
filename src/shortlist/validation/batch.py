"""Read a dataset directory for validation without trusting it.

Unlike `shortlist.data.io.read_dataset`, a missing or unreadable table, a missing manifest
or a checksum that does not match is not an exception here: it becomes a row of the
`files` frame that the snapshot suite checks, so a broken batch is reported and
quarantined like any other failure.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from shortlist.data import schema
from shortlist.data.io import sha256_bytes, snapshot_id_of
from shortlist.errors import ShortlistError
from shortlist.storage import open_store

# Report/table names of the three parquet files.
TABLE_FILES = {
    "interactions": schema.INTERACTIONS,
    "items": schema.ITEMS,
    "users": schema.USERS,
}


@dataclass
class Batch:
    """The tables of one dataset directory (None where a table could not be read)."""

    uri: str
    tables: dict[str, pd.DataFrame | None]
    manifest: dict[str, Any]
    checksums: dict[str, str]
    files: pd.DataFrame
    problems: list[str] = field(default_factory=list)

    @property
    def snapshot_id(self) -> str:
        """The manifest's id, else a content id of the readable files, else a UTC timestamp."""
        sid = str(self.manifest.get("snapshot_id") or "")
        if sid:
            return sid
        if self.checksums:
            return snapshot_id_of(self.checksums)
        return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())

    def table(self, name: str) -> pd.DataFrame | None:
        return self.tables.get(name)

    @property
    def intact(self) -> bool:
        """Every table present and readable, and matching the manifest's checksums."""
        return bool(self.files["checksum_matches_manifest"].all())


def load_batch(uri: str, endpoint_url: str | None = None) -> Batch:
    """Read tables, manifest and actual checksums; raise only when nothing is there."""
    store = open_store(uri, endpoint_url=endpoint_url)
    listed = set(store.list())
    if not listed:
        raise ShortlistError(f"no dataset at {uri} (empty or missing directory)")
    problems: list[str] = []
    manifest: dict[str, Any] = {}
    if schema.SNAPSHOT in listed:
        try:
            loaded = json.loads(store.read_bytes(schema.SNAPSHOT))
            manifest = loaded if isinstance(loaded, dict) else {}
        except ValueError as exc:
            problems.append(f"{schema.SNAPSHOT} is not valid JSON: {exc}")
    else:
        problems.append(f"{schema.SNAPSHOT} is missing")
    expected_sums = manifest.get("checksums") or {}
    expected_rows = manifest.get("rows") or {}

    tables: dict[str, pd.DataFrame | None] = {}
    checksums: dict[str, str] = {}
    rows = []
    for name, file in TABLE_FILES.items():
        present = file in listed
        readable, df, data = False, None, b""
        if present:
            data = store.read_bytes(file)
            checksums[file] = sha256_bytes(data)
            try:
                df = pq.read_table(io.BytesIO(data)).to_pandas()
                readable = True
            except Exception as exc:  # noqa: BLE001 - any parse error is a finding
                problems.append(f"{file} is not readable Parquet: {exc}")
        tables[name] = df
        rows.append(
            {
                "table": name,
                "file": file,
                "present": present,
                "readable": readable,
                "checksum_matches_manifest": present and expected_sums.get(file) == checksums[file],
                "rows_match_manifest": readable and expected_rows.get(file) == len(df),
            }
        )
    return Batch(
        uri=uri,
        tables=tables,
        manifest=manifest,
        checksums=checksums,
        files=pd.DataFrame(rows),
        problems=problems,
    )
