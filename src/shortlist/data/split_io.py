"""Reading a split directory (written by `shortlist split`).

Layout: train/validation/test.parquet (interactions schema), items.parquet and
users.parquet (the snapshot's tables, so a split directory is self-contained),
cold.parquet (columns kind in {item, user}, id, part in {validation, test}: ids with no
interaction in train), and split.json (mode, cutoffs, fractions, counts, snapshot_id).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from shortlist.data import schema
from shortlist.data.io import read_table
from shortlist.storage import open_store

COLD = "cold.parquet"


@dataclass
class Split:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    manifest: dict[str, Any]
    cold: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["kind", "id", "part"]))

    @property
    def snapshot_id(self) -> str:
        return str(self.manifest.get("snapshot_id", ""))

    def cold_items(self, part: str) -> set[str]:
        c = self.cold
        return set(c.loc[(c["kind"] == "item") & (c["part"] == part), "id"])

    def cold_users(self, part: str) -> set[str]:
        c = self.cold
        return set(c.loc[(c["kind"] == "user") & (c["part"] == part), "id"])


def load_split(uri: str) -> Split:
    store = open_store(uri)
    return Split(
        train=read_table(store, schema.TRAIN),
        validation=read_table(store, schema.VALIDATION),
        test=read_table(store, schema.TEST),
        items=read_table(store, schema.ITEMS),
        users=read_table(store, schema.USERS),
        manifest=json.loads(store.read_bytes(schema.SPLIT_MANIFEST)),
        cold=read_table(store, COLD),
    )
