"""Names and types of the data contract every stage reads and writes.

A dataset directory holds three Parquet tables and a snapshot manifest:

- ``interactions.parquet``: user_id (string), item_id (string), timestamp (int64, unix
  seconds UTC), weight (float32: rating, play count, watch seconds; >= 0).
- ``items.parquet``: item_id (string) plus content features: ``title`` (string),
  ``genres`` (list<string>, multi-valued categories), numerics such as ``year`` (float64,
  null when unknown). Items without interactions are legitimate (cold items).
- ``users.parquet``: user_id (string) plus optional features (e.g. age, gender, occupation).
- ``snapshot.json``: snapshot id (content hash), row counts, source, created_at.

Ids are strings so any upstream id scheme survives unchanged to the exported recommendations.
"""

import pyarrow as pa

INTERACTIONS = "interactions.parquet"
ITEMS = "items.parquet"
USERS = "users.parquet"
SNAPSHOT = "snapshot.json"
TABLES = (INTERACTIONS, ITEMS, USERS)

USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"
WEIGHT = "weight"

INTERACTIONS_SCHEMA = pa.schema(
    [
        pa.field(USER_ID, pa.string(), nullable=False),
        pa.field(ITEM_ID, pa.string(), nullable=False),
        pa.field(TIMESTAMP, pa.int64(), nullable=False),
        pa.field(WEIGHT, pa.float32(), nullable=False),
    ]
)

# Item and user tables have required key columns; the feature columns vary by source.
ITEM_REQUIRED = {ITEM_ID: pa.string(), "title": pa.string(), "genres": pa.list_(pa.string())}
USER_REQUIRED = {USER_ID: pa.string()}

# Split directory layout (written by `shortlist split`).
TRAIN = "train.parquet"
VALIDATION = "validation.parquet"
TEST = "test.parquet"
SPLIT_MANIFEST = "split.json"
