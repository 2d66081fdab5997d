"""A tiny valid dataset directory for fast unit tests, and a way to corrupt one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from shortlist.data import schema
from shortlist.data.io import table_to_bytes, write_dataset, write_snapshot_manifest
from shortlist.storage import open_store

T0 = 1_600_000_000  # 2020-09-13 UTC


def tiny_frames() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    interactions = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u2", "u3", "u3"],
            "item_id": ["i1", "i2", "i1", "i3", "i2", "i3"],
            "timestamp": [T0 + k * 60 for k in range(6)],
            "weight": [1.0, 2.0, 3.0, 4.0, 5.0, 1.0],
        }
    )
    items = pd.DataFrame(
        {
            "item_id": ["i1", "i2", "i3", "i4"],
            "title": ["A", "B", "C", "D"],
            "genres": [["x"], ["x", "y"], [], ["z"]],
        }
    )
    users = pd.DataFrame({"user_id": ["u1", "u2", "u3"], "age": [20, 30, 40]})
    return interactions, items, users


def write_tiny(uri: str, interactions: pd.DataFrame | None = None) -> dict:
    inter, items, users = tiny_frames()
    return write_dataset(
        uri, inter if interactions is None else interactions, items, users, source="tiny"
    )


def rewrite_interactions(data: str | Path, df: pd.DataFrame) -> None:
    """Write interactions as given (no contract cast) and a manifest that matches them."""
    store = open_store(data)
    store.write_bytes(schema.INTERACTIONS, table_to_bytes(df))
    checksums = {name: hashlib.sha256(store.read_bytes(name)).hexdigest() for name in schema.TABLES}
    write_snapshot_manifest(store, checksums, source="corrupted")
