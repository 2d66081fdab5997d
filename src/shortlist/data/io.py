"""Read and write dataset directories (local path or s3://) as Parquet tables."""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from shortlist.data import schema
from shortlist.storage import Store, open_store


@dataclass
class Dataset:
    """The three tables of one snapshot, in memory."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    snapshot: dict[str, Any]

    @property
    def snapshot_id(self) -> str:
        return str(self.snapshot.get("snapshot_id", ""))


def table_to_bytes(df: pd.DataFrame | pa.Table, arrow_schema: pa.Schema | None = None) -> bytes:
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    if arrow_schema is not None:
        table = table.cast(arrow_schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def read_table(store: Store, key: str) -> pd.DataFrame:
    return pq.read_table(io.BytesIO(store.read_bytes(key))).to_pandas()


def write_table(store: Store, key: str, df: pd.DataFrame, arrow_schema: pa.Schema | None = None):
    store.write_bytes(key, table_to_bytes(df, arrow_schema))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def snapshot_id_of(checksums: dict[str, str]) -> str:
    """Content id of a snapshot: a hash over its tables' checksums (order-independent)."""
    joined = "\n".join(f"{k}={v}" for k, v in sorted(checksums.items()))
    return sha256_bytes(joined.encode())[:16]


def normalise_interactions(df: pd.DataFrame) -> pd.DataFrame:
    """Cast to the contract's dtypes (ids as strings) without reordering rows."""
    out = pd.DataFrame(
        {
            schema.USER_ID: df[schema.USER_ID].astype(str),
            schema.ITEM_ID: df[schema.ITEM_ID].astype(str),
            schema.TIMESTAMP: df[schema.TIMESTAMP].astype("int64"),
            schema.WEIGHT: df[schema.WEIGHT].astype("float32"),
        }
    )
    return out


def write_dataset(
    uri: str,
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame,
    source: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the three tables and snapshot.json; returns the snapshot manifest.

    Interactions are cast to the contract's schema here, so every importer produces
    the same types. Items and users keep their feature columns as given.
    """
    store = open_store(uri)
    blobs = {
        schema.INTERACTIONS: table_to_bytes(
            normalise_interactions(interactions), schema.INTERACTIONS_SCHEMA
        ),
        schema.ITEMS: table_to_bytes(items),
        schema.USERS: table_to_bytes(users),
    }
    return _write_blobs(store, blobs, source, extra)


def _write_blobs(
    store: Store, blobs: dict[str, bytes], source: str, extra: dict[str, Any] | None
) -> dict[str, Any]:
    checksums = {name: sha256_bytes(data) for name, data in blobs.items()}
    for name, data in blobs.items():
        store.write_bytes(name, data)
    return write_snapshot_manifest(store, checksums, source, extra)


def write_snapshot_manifest(
    store: Store, checksums: dict[str, str], source: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    rows = {
        name: pq.read_metadata(io.BytesIO(store.read_bytes(name))).num_rows for name in checksums
    }
    manifest = {
        "snapshot_id": snapshot_id_of(checksums),
        "source": source,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "checksums": checksums,
        "rows": rows,
        **(extra or {}),
    }
    store.write_bytes(schema.SNAPSHOT, json.dumps(manifest, indent=2).encode())
    return manifest


def read_snapshot(uri: str) -> dict[str, Any]:
    store = open_store(uri)
    if not store.exists(schema.SNAPSHOT):
        return {}
    return json.loads(store.read_bytes(schema.SNAPSHOT))


def read_dataset(uri: str) -> Dataset:
    store = open_store(uri)
    return Dataset(
        interactions=read_table(store, schema.INTERACTIONS),
        items=read_table(store, schema.ITEMS),
        users=read_table(store, schema.USERS),
        snapshot=read_snapshot(uri),
    )
