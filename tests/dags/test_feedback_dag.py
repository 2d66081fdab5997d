"""The shortlist_feedback DAG, run for real (`airflow dags test`): a window of logged
impressions and events becomes a batch and lands in data.dir through the data contract."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shortlist.data import schema
from shortlist.data.io import read_snapshot, write_dataset
from shortlist.serving import events as ev
from shortlist.serving import impressions as imp
from tests.dags.airflow_helpers import dags_test, output
from tests.serving.conftest import tiny_tables

pytestmark = pytest.mark.slow

LOGICAL = "2024-01-02T00:00:00+00:00"
# The latest window closed at LOGICAL (lateness 1 h + 30 s flush): 21:00 to 22:00.
SERVED = datetime(2024, 1, 1, 21, 30, tzinfo=UTC).timestamp()


@pytest.fixture
def params(params, tmp_path: Path):  # noqa: ANN001, ANN201
    work = tmp_path / "work"
    return params.with_overrides(
        {
            "feedback.events_dir": str(work / "events"),
            "feedback.batches_dir": str(work / "feedback"),
        }
    )


def _write(directory: str, name: str, rows: dict, arrow_schema: pa.Schema) -> None:
    Path(directory).mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pydict(rows, schema=arrow_schema), buf)
    (Path(directory) / name).write_bytes(buf.getvalue())


def test_dags_test_joins_and_lands(airflow_home, params_file: Path, params) -> None:  # noqa: ANN001
    interactions, items, users = tiny_tables(n_users=40, n_items=60, n_interactions=800)
    write_dataset(params.data.dir, interactions, items, users, source="csv")
    before = len(interactions)
    interactions = interactions.astype({"timestamp": "int64"})
    ms = int(SERVED * 1000)
    _write(
        params.serving.impressions_dir,
        f"impressions-{ms}-1-abcdef-000001.parquet",
        {
            "request_id": ["r1"] * 3,
            "timestamp": [SERVED] * 3,
            "endpoint": ["/recommend"] * 3,
            "user_id": ["u1"] * 3,
            "bundle_id": ["b1"] * 3,
            "item_id": ["i1", "i2", "i3"],
            "position": [0, 1, 2],
            "score": [3.0, 2.0, 1.0],
            "retrieval_score": [None] * 3,
            "propensity": [0.9, 0.6, 0.3],
            "policy": ["plackett_luce"] * 3,
            "strategy": ["personalized"] * 3,
            "explored": [False] * 3,
            "exploration_cost": [0.0] * 3,
            "bandit_draw": [False] * 3,
        },
        imp.SCHEMA,
    )
    _write(
        params.feedback.events_dir,
        f"events-{ms + 60_000}-1-abcdef-000001.parquet",
        {
            "event_id": ["e1", "e2"],
            "request_id": ["r1", "r1"],
            "item_id": ["i2", "i3"],
            "position": [1, 2],
            "kind": ["click", "watch"],
            "value": [None, 180.0],
            "timestamp": [SERVED + 60, SERVED + 300],
            "occurred_at": [None, None],
            "served_at": [SERVED, SERVED],
        },
        ev.SCHEMA,
    )

    proc = dags_test(airflow_home, "shortlist_feedback", {"params_file": str(params_file)}, LOGICAL)
    assert proc.returncode == 0, output(proc)

    batch = Path(params.feedback.batches_dir) / "20240101T210000Z-20240101T220000Z"
    exposures = pd.read_parquet(batch / schema.EXPOSURES)
    assert exposures["engaged"].tolist() == [False, True, True]
    landed = pd.read_parquet(Path(params.data.dir) / schema.INTERACTIONS)
    assert len(landed) == before + 2
    keys = ["user_id", "item_id", "timestamp"]
    marked = landed.merge(interactions[keys], on=keys, how="left", indicator=True)
    new = marked[marked["_merge"] == "left_only"].sort_values("item_id")
    assert new["item_id"].tolist() == ["i2", "i3"] and new["weight"].tolist() == [1.0, 3.0]
    assert read_snapshot(params.data.dir)["feedback"]["batches"] == [batch.name]
