"""The generic CSV/Parquet importer: column mapping, '|' lists, optional columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shortlist.data import csv_source
from shortlist.errors import ShortlistError


def _files(tmp_path: Path) -> tuple[Path, Path, Path]:
    inter = tmp_path / "events.csv"
    inter.write_text(
        "uid,sku,score,ts\n007,A-1,2.5,1700000300\n007,B-2,1,1700000100\n42,A-1,4,1700000200\n"
    )
    items = tmp_path / "catalog.csv"
    items.write_text(
        "sku,name,genres,price,tags\n"
        'A-1,"Widget, large",tools|home,9.5,sale|new\n'
        "B-2,Gadget,,12,\n"
        "C-3,Unused,garden,3,\n"
    )
    users = tmp_path / "people.csv"
    users.write_text("uid,country,age\n007,NL,31\n42,DE,\n")
    return inter, items, users


def test_mapping_lists_and_types(tmp_path: Path):
    inter, items_f, users_f = _files(tmp_path)
    mapping = {"user_id": "uid", "item_id": "sku", "weight": "score", "timestamp": "ts"}
    mapping["title"] = "name"
    interactions, items, users, extra = csv_source.load_csv(inter, items_f, users_f, mapping)
    assert interactions.columns.tolist() == ["user_id", "item_id", "timestamp", "weight"]
    assert interactions["user_id"].tolist() == ["007", "007", "42"]  # leading zero kept
    assert interactions["timestamp"].tolist() == [1700000300, 1700000100, 1700000200]
    assert interactions["weight"].dtype == np.float32
    assert interactions["weight"].tolist() == [2.5, 1.0, 4.0]
    by_id = items.set_index("item_id")
    assert by_id.loc["A-1", "title"] == "Widget, large"
    assert list(by_id.loc["A-1", "genres"]) == ["tools", "home"]
    assert list(by_id.loc["B-2", "genres"]) == []
    assert list(by_id.loc["A-1", "tags"]) == ["sale", "new"]
    assert by_id.loc["B-2", "price"] == 12.0 and items["price"].dtype == np.float64
    assert "C-3" in by_id.index  # catalog items without interactions are kept (cold items)
    u = users.set_index("user_id")
    assert u.loc["007", "country"] == "NL" and np.isnan(u.loc["42", "age"])
    assert extra["column_map"] == mapping
    assert "synthetic_timestamps" not in extra


def test_no_timestamp_gives_monotone_order_and_says_so(tmp_path: Path):
    f = tmp_path / "i.csv"
    f.write_text("user_id,item_id\nu1,x\nu2,y\nu1,y\n")
    interactions, items, users, extra = csv_source.load_csv(f)
    ts = interactions["timestamp"].to_numpy()
    assert (np.diff(ts) > 0).all() and ts[0] == csv_source.SYNTHETIC_T0
    assert "synthetic_timestamps" in extra and "implicit_weights" in extra
    assert (interactions["weight"] == 1.0).all()
    assert sorted(items["item_id"]) == ["x", "y"] and items["title"].tolist() == ["", ""]
    assert sorted(users["user_id"]) == ["u1", "u2"]


def test_iso_timestamps(tmp_path: Path):
    f = tmp_path / "i.csv"
    f.write_text("user_id,item_id,timestamp\n1,a,2024-01-01T00:00:00Z\n1,b,2024-01-01 01:00:00\n")
    interactions, *_ = csv_source.load_csv(f)
    assert interactions["timestamp"].tolist() == [1704067200, 1704070800]
    f.write_text("user_id,item_id,timestamp\n1,a,yesterday\n")
    with pytest.raises(ShortlistError, match="neither unix seconds nor a date"):
        csv_source.load_csv(f)


def test_parquet_input(tmp_path: Path):
    f = tmp_path / "i.parquet"
    pd.DataFrame(
        {"user_id": [1, 2], "item_id": [10, 20], "weight": [1.0, 3.0], "timestamp": [5, 6]}
    ).to_parquet(f)
    interactions, *_ = csv_source.load_csv(f)
    assert interactions["user_id"].tolist() == ["1", "2"]
    assert interactions["item_id"].tolist() == ["10", "20"]


def test_missing_columns_and_duplicates_are_named(tmp_path: Path):
    f = tmp_path / "i.csv"
    f.write_text("uid,item_id\n1,2\n")
    with pytest.raises(ShortlistError, match="user_id"):
        csv_source.load_csv(f)
    ok = tmp_path / "ok.csv"
    ok.write_text("user_id,item_id\n1,2\n")
    dup = tmp_path / "items.csv"
    dup.write_text("item_id,title\n2,a\n2,b\n")
    with pytest.raises(ShortlistError, match="duplicate item_id"):
        csv_source.load_csv(ok, items_path=dup)
