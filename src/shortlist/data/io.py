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
from shortlist.errors import ShortlistError
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


def feature_table(df: pd.DataFrame | pa.Table, required: dict[str, pa.DataType]) -> pa.Table:
    """An item or user table with the contract's types on its required columns.

    pandas hands Arrow `large_string` for text and `list<null>` for an all-empty list
    column; both are cast here (to `string`, `list<string>`) so every writer produces the
    same physical schema. Feature columns keep their type, text narrowed to `string`.
    """
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata(None)
    fields = [
        pa.field(f.name, required[f.name] if f.name in required else _narrow(f.type))
        for f in table.schema
    ]
    return table.cast(pa.schema(fields))


def _narrow(dtype: pa.DataType) -> pa.DataType:
    if pa.types.is_large_string(dtype):
        return pa.string()
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        value = dtype.value_type
        return pa.list_(pa.string() if pa.types.is_null(value) else _narrow(value))
    return dtype


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
        schema.INTERACTIONS: _contract_bytes(
            uri,
            schema.INTERACTIONS,
            lambda: table_to_bytes(
                normalise_interactions(interactions), schema.INTERACTIONS_SCHEMA
            ),
        ),
        schema.ITEMS: _contract_bytes(
            uri, schema.ITEMS, lambda: table_to_bytes(feature_table(items, schema.ITEM_REQUIRED))
        ),
        schema.USERS: _contract_bytes(
            uri, schema.USERS, lambda: table_to_bytes(feature_table(users, schema.USER_REQUIRED))
        ),
    }
    return _write_blobs(store, blobs, source, extra)


def _contract_bytes(uri: str, name: str, build) -> bytes:
    """Parquet bytes of one table; a value the contract cannot hold names the table."""
    try:
        return build()
    except (pa.ArrowException, ValueError, TypeError, KeyError) as exc:
        raise ShortlistError(
            f"{uri}/{name}: does not fit the data contract (shortlist.data.schema): {exc}"
        ) from None


def _write_blobs(
    store: Store, blobs: dict[str, bytes], source: str, extra: dict[str, Any] | None
) -> dict[str, Any]:
    checksums = {name: sha256_bytes(data) for name, data in blobs.items()}
    for name, data in blobs.items():
        store.write_bytes(name, data)
    return write_snapshot_manifest(store, checksums, source, extra)


def write_snapshot_manifest(
    store: Store,
    checksums: dict[str, str],
    source: str,
    extra: dict[str, Any] | None = None,
    rows: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Write snapshot.json. `rows` (table -> row count) saves re-reading large tables."""
    if rows is None:
        rows = {
            name: pq.read_metadata(io.BytesIO(store.read_bytes(name))).num_rows
            for name in checksums
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
