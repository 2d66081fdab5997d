"""Bad data through the real CLI (`shortlist ingest`, `shortlist validate`): each ends safe.

Reproductions: the gate passed `inf` and `1e38` weights, a 10-million-character item id
and whitespace-only ids; a first batch with empty titles or a single user passed and
became the reference; a header-only CSV died in Arrow; empty and non-UTF-8 files gave
errors that did not name the file; a bad timestamp message quoted a valid value. Now
`ingest` exits 1 with one line naming the file and the rule, and `validate` exits 1,
names the failed rule, quarantines the batch and leaves no reference behind.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from shortlist.data.io import write_dataset
from tests.servers import binary
from tests.validation.tiny import rewrite_interactions, tiny_frames, write_tiny


def _shortlist(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(binary("shortlist")), *args],
        cwd=cwd,
        env={**os.environ, "SHORTLIST_PARAMS": str(Path(__file__).parents[2] / "params.yaml")},
        capture_output=True,
        text=True,
        timeout=300,
    )


CSV_CASES = {
    "header_only": (b"user_id,item_id,timestamp\n", "no data rows"),
    "empty": (b"", "empty file"),
    "latin1": (b"user_id,item_id\nu\xe9,i1\n", "not UTF-8 text (byte 0xe9 on line 2)"),
    # The old message blamed row 1's 1700000000 (valid unix seconds) for row 3's fault.
    "bad_timestamp": (
        b"user_id,item_id,timestamp\nu1,i1,1700000000\nu2,i2,1700000100\nu3,i3,yesterday\n",
        "column timestamp: 1 value(s) are neither unix seconds nor ISO 8601 date-times, "
        "e.g. data row 3: 'yesterday'",
    ),
    "mixed_timestamps": (
        b"user_id,item_id,timestamp\nu1,i1,1700000000\nu2,i2,2024-01-02\n",
        "column timestamp mixes unix seconds (data row 1: '1700000000') and date-times "
        "(data row 2: '2024-01-02'); use one kind",
    ),
}


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_bad_csv_files_are_one_line_errors_naming_the_file(tmp_path, case):
    content, needle = CSV_CASES[case]
    path = tmp_path / f"{case}.csv"
    path.write_bytes(content)
    proc = _shortlist(tmp_path, "ingest", "--source", "csv", "--path", str(path), "--out", "out")
    assert proc.returncode == 1, proc.stdout
    line = proc.stderr.strip()
    assert "\n" not in line and line.startswith(f"shortlist ingest: {path}: "), line
    assert needle in line
    if case == "bad_timestamp":
        assert "1700000000" not in line  # the valid values are not blamed
    assert not (tmp_path / "out" / "snapshot.json").exists()


def _weight(bad: float):
    def make(data: Path) -> None:
        write_tiny(str(data))
        inter, _, _ = tiny_frames()
        inter["weight"] = inter["weight"].astype("float32")
        inter.loc[1, "weight"] = bad
        rewrite_interactions(data, inter)

    return make


def _tables(change):
    def make(data: Path) -> None:
        inter, items, users = tiny_frames()
        change(inter, items, users)
        write_dataset(str(data), inter, items, users, source="tiny")

    return make


def _huge_item(inter, items, _users):
    huge = "i" * 10_000_000
    inter.loc[inter["item_id"] == "i1", "item_id"] = huge
    items.loc[items["item_id"] == "i1", "item_id"] = huge


def _blank_user(inter, _items, users):
    inter.loc[inter["user_id"] == "u2", "user_id"] = "   "
    users.loc[users["user_id"] == "u2", "user_id"] = "   "


def _one_user(inter, _items, _users):
    inter["user_id"] = "u1"
    inter["timestamp"] = range(1_600_000_000, 1_600_000_000 + len(inter))


def _no_titles(_inter, items, _users):
    items["title"] = ""


BATCHES = {
    "inf_weight": (
        _weight(float("inf")),
        "interactions.expect_column_values_to_be_between[weight]",
    ),
    "1e38_weight": (_weight(1e38), "interactions.expect_column_values_to_be_between[weight]"),
    "10M_char_item_id": (
        _tables(_huge_item),
        "interactions.expect_column_value_lengths_to_be_between[item_id]",
    ),
    "whitespace_user_id": (
        _tables(_blank_user),
        "interactions.expect_column_values_to_match_regex[user_id]",
    ),
    "single_user": (
        _tables(_one_user),
        "interactions.expect_column_unique_value_count_to_be_between[user_id]",
    ),
    "empty_titles": (
        _tables(_no_titles),
        "items_titles.expect_column_values_to_be_between[titled_share]",
    ),
}


@pytest.mark.parametrize("case", sorted(BATCHES))
def test_a_bad_first_batch_is_quarantined_and_never_becomes_the_reference(tmp_path, case):
    make, rule = BATCHES[case]
    data = tmp_path / "data"
    make(data)
    work = tmp_path / "work"
    sets = {
        "validation.reference_dir": work / "reference",
        "validation.quarantine_dir": work / "quarantine",
        "validation.docs_dir": work / "docs",
        "validation.min_users": 2,  # the tiny batch's three users pass; one does not
    }
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    proc = _shortlist(tmp_path, "validate", str(data), *args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "validation FAILED" in proc.stdout and "snapshot none" in proc.stdout  # first batch
    assert f"FAIL [{rule.split('.')[0]}] {rule.split('.')[1].split('[')[0]}" in proc.stdout
    assert "rule: " in proc.stdout  # the rule in words, with its params key where it has one
    assert "quarantined (moved) to:" in proc.stdout
    assert not data.exists() and list((work / "quarantine").iterdir())
    assert not (work / "reference" / "snapshot.json").exists()
