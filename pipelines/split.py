"""Stage `split`: a dataset directory -> a self-contained split directory (path or s3://).

Reads the snapshot's interactions, splits them by time (params.split), and writes the
layout `shortlist.data.split_io.load_split` reads: train/validation/test.parquet,
items.parquet and users.parquet (copied byte for byte), cold.parquet and split.json.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from shortlist.config import Params
from shortlist.data import schema
from shortlist.data.io import read_snapshot, read_table, sha256_bytes, table_to_bytes
from shortlist.data.split import COLD_SCHEMA, cold_ids, summary, temporal_split
from shortlist.data.split_io import COLD
from shortlist.storage import open_store


def run(params: Params, *, data_dir: str, out_dir: str) -> dict[str, Any]:
    """Split `data_dir` into `out_dir`; returns the manifest written as split.json."""
    cfg = params.split
    src = open_store(str(data_dir))
    interactions = read_table(src, schema.INTERACTIONS)
    result = temporal_split(
        interactions,
        mode=cfg.mode,
        validation_fraction=cfg.validation_fraction,
        test_fraction=cfg.test_fraction,
        min_user_interactions=cfg.min_user_interactions,
    )
    del interactions
    cold = cold_ids(result)
    out = open_store(str(out_dir))
    checksums = {}
    blobs = {
        schema.TRAIN: lambda: table_to_bytes(result.train, schema.INTERACTIONS_SCHEMA),
        schema.VALIDATION: lambda: table_to_bytes(result.validation, schema.INTERACTIONS_SCHEMA),
        schema.TEST: lambda: table_to_bytes(result.test, schema.INTERACTIONS_SCHEMA),
        COLD: lambda: table_to_bytes(cold, COLD_SCHEMA),
        schema.ITEMS: lambda: src.read_bytes(schema.ITEMS),
        schema.USERS: lambda: src.read_bytes(schema.USERS),
    }
    for name, make in blobs.items():  # one table in memory at a time
        data = make()
        checksums[name] = sha256_bytes(data)
        out.write_bytes(name, data)
        del data
    snapshot = read_snapshot(str(data_dir))
    manifest = {
        "mode": cfg.mode,
        "cutoffs": result.cutoffs,
        "fractions": {"validation": cfg.validation_fraction, "test": cfg.test_fraction},
        "min_user_interactions": cfg.min_user_interactions,
        **summary(result, cold),
        "snapshot_id": snapshot.get("snapshot_id", ""),
        "source": snapshot.get("source", ""),
        "checksums": checksums,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out.write_bytes(schema.SPLIT_MANIFEST, json.dumps(manifest, indent=2).encode())
    return manifest


if __name__ == "__main__":  # `python -m pipelines.split DATA --out SPLIT`
    from shortlist.cli import main

    sys.exit(main(["split", *sys.argv[1:]]))
