"""Stage `ingest`: real ml-100k into a dataset directory, and the CLI with the csv source."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import ingest
from shortlist.cli import main
from shortlist.data import schema
from shortlist.data.io import read_dataset
from shortlist.errors import ShortlistError


def test_ml100k_ingest_snapshot(params, ml100k_path: Path, tmp_path: Path):
    out = tmp_path / "data"
    manifest = ingest.run(params, source="movielens-100k", path=str(ml100k_path), out_dir=str(out))
    assert manifest["rows"] == {
        schema.INTERACTIONS: 100_000,
        schema.ITEMS: 1682,
        schema.USERS: 943,
    }
    assert manifest["source"] == "movielens-100k"
    for name in schema.TABLES:  # checksums are the sha256 of the bytes on disk
        assert manifest["checksums"][name] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    assert manifest["inputs_sha256"]["u.data"] == (
        "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"
    )
    assert json.loads((out / schema.SNAPSHOT).read_text())["snapshot_id"] == manifest["snapshot_id"]

    assert pq.read_schema(out / schema.INTERACTIONS).equals(schema.INTERACTIONS_SCHEMA)
    item_schema = pq.read_schema(out / schema.ITEMS)
    assert item_schema.field("title").type == pa.string()
    assert item_schema.field("genres").type == pa.list_(pa.string())
    assert item_schema.field("year").type == pa.float64()

    ds = read_dataset(str(out))
    assert ds.snapshot_id == manifest["snapshot_id"]
    assert ds.interactions["user_id"].nunique() == 943
    assert ds.interactions["item_id"].nunique() == 1682
    assert len({g for gs in ds.items["genres"] for g in gs}) == 19
    assert "Misérables, Les (1995)" in set(ds.items["title"])

    again = ingest.run(params, source="movielens-100k", path=str(ml100k_path), out_dir=str(out))
    assert again["snapshot_id"] == manifest["snapshot_id"]  # content id is deterministic


def test_cli_csv_with_mapping(params, tmp_path: Path, monkeypatch):
    (tmp_path / "events.csv").write_text("uid,iid,weight\na,x,1\nb,y,2\na,y,3\n")
    (tmp_path / "items.csv").write_text("iid,title,genres\nx,Ex,g1|g2\ny,Why,\n")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(json.dumps(params.model_dump()))
    out = tmp_path / "data"
    code = main(
        [
            "ingest",
            "--params",
            str(params_file),
            "--source",
            "csv",
            "--path",
            str(tmp_path / "events.csv"),
            "--items",
            str(tmp_path / "items.csv"),
            "--map",
            "user_id=uid",
            "--map",
            "item_id=iid",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    snap = json.loads((out / schema.SNAPSHOT).read_text())
    assert snap["rows"][schema.INTERACTIONS] == 3
    assert snap["column_map"] == {"user_id": "uid", "item_id": "iid"}
    assert "synthetic_timestamps" in snap
    ds = read_dataset(str(out))
    assert ds.interactions["timestamp"].is_monotonic_increasing
    assert [list(g) for g in ds.items.sort_values("item_id")["genres"]] == [["g1", "g2"], []]
    assert pq.read_schema(out / schema.ITEMS).field("genres").type == pa.list_(pa.string())


def test_movielens_rejects_csv_options(params, ml100k_path: Path, tmp_path: Path):
    with pytest.raises(ShortlistError, match="csv source"):
        ingest.run(
            params,
            source="movielens-100k",
            path=str(ml100k_path),
            out_dir=str(tmp_path / "d"),
            column_map={"user_id": "uid"},
        )
