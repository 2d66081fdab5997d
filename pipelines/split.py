"""Stage `split`: a dataset directory -> a self-contained split directory (path or s3://).

Reads the snapshot's interactions, splits them as the data calls for (params.split:
`auto` picks random, per-user or global from whether time is real and how many users a
time cut covers), refuses parts too small to decide on, and writes the layout
`shortlist.data.split_io.load_split` reads: train/validation/test.parquet, items.parquet
and users.parquet (copied byte for byte), cold.parquet and split.json (mode, the rule that
chose it, sizes and cold shares per part; the towers' MLflow run records it).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from shortlist.config import Params
from shortlist.data import schema
from shortlist.data.io import read_snapshot, read_table, sha256_bytes, table_to_bytes
from shortlist.data.split import (
    COLD_SCHEMA,
    check_sizes,
    cold_ids,
    resolve_mode,
    summary,
    temporal_split,
    timestamps_are_real,
)
from shortlist.data.split_io import COLD
from shortlist.storage import open_store

log = logging.getLogger(__name__)


def run(params: Params, *, data_dir: str, out_dir: str) -> dict[str, Any]:
    """Split `data_dir` into `out_dir`; returns the manifest written as split.json."""
    cfg = params.split
    src = open_store(str(data_dir))
    snapshot = read_snapshot(str(data_dir))
    real_time = timestamps_are_real(snapshot)
    interactions = read_table(src, schema.INTERACTIONS)
    mode, rule = resolve_mode(
        cfg.mode,
        interactions,
        real_time=real_time,
        validation_fraction=cfg.validation_fraction,
        test_fraction=cfg.test_fraction,
        min_user_interactions=cfg.min_user_interactions,
        global_min_user_share=cfg.global_min_user_share,
    )
    result = temporal_split(
        interactions,
        mode=mode,
        validation_fraction=cfg.validation_fraction,
        test_fraction=cfg.test_fraction,
        min_user_interactions=cfg.min_user_interactions,
        seed=params.project.seed,
    )
    del interactions
    cold = cold_ids(result)
    sizes = summary(result, cold)
    fractions = {"validation": cfg.validation_fraction, "test": cfg.test_fraction}
    log.info("split mode %s: %s", mode, rule)
    log.info("split sizes: %s", json.dumps(sizes["parts"]))
    check_sizes(sizes, min_users=cfg.min_validation_users, fractions=fractions)
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
    manifest = {
        "mode": mode,
        "requested_mode": cfg.mode,
        "rule": rule,
        "timestamps": "real" if real_time else "synthetic",
        "cutoffs": result.cutoffs,
        "fractions": fractions,
        "min_user_interactions": cfg.min_user_interactions,
        **sizes,
        "shares": cold_shares(sizes),
        "snapshot_id": snapshot.get("snapshot_id", ""),
        "source": snapshot.get("source", ""),
        "checksums": checksums,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out.write_bytes(schema.SPLIT_MANIFEST, json.dumps(manifest, indent=2).encode())
    return manifest


def cold_shares(sizes: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Share of each evaluated part's users and items with no train interaction."""
    out = {}
    for part in ("validation", "test"):
        info, cold = sizes["parts"][part], sizes["cold"][part]
        out[part] = {
            "cold_users": cold["users"] / info["users"] if info["users"] else 0.0,
            "cold_items": cold["items"] / info["items"] if info["items"] else 0.0,
        }
    return out
