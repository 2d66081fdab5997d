"""Reading an untrusted batch, publishing the reference, moving a batch to quarantine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shortlist.errors import ShortlistError
from shortlist.validation import quarantine as q
from shortlist.validation.batch import load_batch
from shortlist.validation.reference import load_reference, publish_reference
from tests.validation.tiny import write_tiny


def test_load_batch_reports_missing_and_tampered_files_without_raising(tmp_path: Path):
    data = tmp_path / "data"
    manifest = write_tiny(str(data))
    (data / "users.parquet").unlink()
    (data / "items.parquet").write_bytes(b"not parquet")

    batch = load_batch(str(data))

    files = batch.files.set_index("table")
    assert files.loc["users", "present"] == False  # noqa: E712 - numpy bool
    assert files.loc["items", "readable"] == False  # noqa: E712
    assert files.loc["items", "checksum_matches_manifest"] == False  # noqa: E712
    assert files.loc["interactions", "checksum_matches_manifest"] == True  # noqa: E712
    assert batch.table("users") is None and batch.table("items") is None
    assert len(batch.table("interactions")) == 6
    assert batch.snapshot_id == manifest["snapshot_id"]
    assert not batch.intact


def test_load_batch_raises_only_when_there_is_nothing(tmp_path: Path):
    with pytest.raises(ShortlistError, match="no dataset"):
        load_batch(str(tmp_path / "nothing"))


def test_publish_reference_replaces_whole_and_leaves_no_temp(tmp_path: Path):
    first, second, ref = tmp_path / "a", tmp_path / "b", tmp_path / "ref"
    m1 = write_tiny(str(first))
    inter = load_batch(str(first)).table("interactions").iloc[:4]
    m2 = write_tiny(str(second), inter)
    assert load_reference(str(ref)) is None

    publish_reference(str(first), str(ref), m1)
    assert load_reference(str(ref)).snapshot_id == m1["snapshot_id"]
    publish_reference(str(second), str(ref), m2)

    loaded = load_reference(str(ref))
    assert loaded.snapshot_id == m2["snapshot_id"] and len(loaded.table("interactions")) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "ref"]


def test_corrupt_reference_is_an_error_not_a_missing_one(tmp_path: Path):
    ref = tmp_path / "ref"
    write_tiny(str(ref))
    (ref / "items.parquet").write_bytes(b"x")
    with pytest.raises(ShortlistError, match="corrupt"):
        load_reference(str(ref))


def test_quarantine_moves_everything_and_never_overwrites(tmp_path: Path):
    root = tmp_path / "quarantine"
    for n in range(2):
        data = tmp_path / f"data{n}"
        write_tiny(str(data))
        (data / "extra.txt").write_text("kept")
        names = sorted(p.name for p in data.iterdir())
        dest = q.destination(str(root), "snap:1")
        q.quarantine(str(data), dest, json.dumps({"n": n}))
        assert not data.exists()
        assert sorted(p.name for p in Path(dest).iterdir()) == sorted([*names, "validation.json"])
        assert json.loads((Path(dest) / "validation.json").read_text()) == {"n": n}
    names = sorted(p.name for p in root.iterdir())
    assert len(names) == 2 and names[0] == "snap_1" and names[1].startswith("snap_1-")
