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
    with pytest.raises(ShortlistError, match="neither unix seconds nor ISO 8601"):
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


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "empty file"),
        (b"  \n", "empty file"),
        (b"user_id,item_id,timestamp\n", r"no data rows \(columns: user_id, item_id, timestamp\)"),
        (b"user_id,item_id\nu\xe9,i1\n", "not UTF-8 text \\(byte 0xe9 on line 2\\)"),
        (b'user_id,item_id\n"u1,i1\n', "not a readable CSV file"),
        (
            b"user_id,item_id,timestamp\nu1,i1,2024-01-01\nu2,i2,2024-01-02\nu3,i3,soon\n",
            "1 value\\(s\\) are neither unix seconds nor ISO 8601 date-times, e.g. data row 3: 'soon'",
        ),
        (
            b"user_id,item_id,timestamp\nu1,i1,1700000000\nu2,i2,2024-01-02\n",
            "mixes unix seconds \\(data row 1: '1700000000'\\) and date-times \\(data row 2",
        ),
        (b"user_id,item_id,timestamp\nu1,i1,\nu2,i2,5\n", "1 empty value\\(s\\), e.g. data row 1$"),
        (b"user_id,item_id,weight\nu1,i1,1\nu2,i2,lots\n", "column weight: .* data row 2: 'lots'"),
    ],
)
def test_bad_files_are_errors_naming_the_file_and_the_rule(tmp_path: Path, content, needle):
    f = tmp_path / "events.csv"
    f.write_bytes(content)
    with pytest.raises(ShortlistError, match=r"events\.csv: .*" + needle):
        csv_source.load_csv(f)


def test_header_only_items_file_and_unreadable_parquet_are_named(tmp_path: Path):
    inter = tmp_path / "events.csv"
    inter.write_text("user_id,item_id\nu1,i1\n")
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\n")
    with pytest.raises(ShortlistError, match=r"items\.csv: no data rows"):
        csv_source.load_csv(inter, items_path=items)
    broken = tmp_path / "events.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(ShortlistError, match=r"events\.parquet: not a readable Parquet file"):
        csv_source.load_csv(broken)


def test_a_table_the_contract_cannot_hold_is_named_when_written(tmp_path: Path):
    from shortlist.data.io import write_dataset

    inter = pd.DataFrame(
        {"user_id": ["u1"], "item_id": ["i1"], "timestamp": [1], "weight": [np.nan]}
    )
    items = pd.DataFrame({"item_id": ["i1"], "title": ["t"], "genres": [["g"]]})
    users = pd.DataFrame({"user_id": ["u1"]})
    with pytest.raises(ShortlistError, match=r"data/interactions\.parquet: does not fit .*weight"):
        write_dataset(str(tmp_path / "data"), inter, items, users, source="test")
