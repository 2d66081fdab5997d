"""Names and types of the data contract every stage reads and writes.

A dataset directory holds three Parquet tables and a snapshot manifest:

- ``interactions.parquet``: user_id (string), item_id (string), timestamp (int64, unix
  seconds UTC), weight (float32: rating, play count, watch seconds; >= 0).
- ``items.parquet``: item_id (string) plus content features: ``title`` (string),
  ``genres`` (list<string>, multi-valued categories), numerics such as ``year`` (float64,
  null when unknown). Items without interactions are legitimate (cold items).
- ``users.parquet``: user_id (string) plus optional features (e.g. age, gender, occupation).
- ``snapshot.json``: snapshot id (content hash), row counts, source, created_at.
- ``exposures.parquet`` (optional; written by the feedback join, see
  ``pipelines.feedback``): every item a served list showed, engaged or not, with the
  propensity the serving policy showed it with: request_id, user_id (null for anonymous
  requests), item_id, timestamp (int64, unix seconds the list was served), position
  (int32, 0-based), propensity (float64, in (0, 1]), policy, bundle_id, engaged (bool),
  weight (float32, the engagement weight; 0 when not engaged), skipped and dismissed
  (bool). Readers of the three tables above never need it; exposure-aware training and
  off-policy evaluation read it.

Ids are strings so any upstream id scheme survives unchanged to the exported recommendations.
"""

import pyarrow as pa

INTERACTIONS = "interactions.parquet"
ITEMS = "items.parquet"
USERS = "users.parquet"
SNAPSHOT = "snapshot.json"
TABLES = (INTERACTIONS, ITEMS, USERS)
EXPOSURES = "exposures.parquet"  # optional, beside TABLES (not one of them)

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

EXPOSURES_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field(USER_ID, pa.string()),
        pa.field(ITEM_ID, pa.string(), nullable=False),
        pa.field(TIMESTAMP, pa.int64(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("propensity", pa.float64(), nullable=False),
        pa.field("policy", pa.string(), nullable=False),
        pa.field("bundle_id", pa.string(), nullable=False),
        pa.field("engaged", pa.bool_(), nullable=False),
        pa.field(WEIGHT, pa.float32(), nullable=False),
        pa.field("skipped", pa.bool_(), nullable=False),
        pa.field("dismissed", pa.bool_(), nullable=False),
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
