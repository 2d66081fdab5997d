"""The absolute rules of the data contract: each bad batch fails by name, even the first.

Every case runs the real gate (Great Expectations) on a dataset directory with no
reference, so nothing but the absolute rules stands between it and becoming the
reference."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipelines import validate
from shortlist.data.io import write_dataset
from tests.validation.tiny import rewrite_interactions, tiny_frames, write_tiny


def _run(params, tmp_path: Path, inter=None, items=None, users=None):
    i0, it0, u0 = tiny_frames()
    data = tmp_path / "data"
    write_dataset(
        str(data),
        i0 if inter is None else inter,
        it0 if items is None else items,
        u0 if users is None else users,
        source="tiny",
    )
    return validate.run(params, data_dir=str(data))


@pytest.mark.parametrize("bad", [float("inf"), 1e38, float("nan"), -float("inf")])
def test_weights_must_be_finite_and_bounded(params, tmp_path, bad):
    inter, _, _ = tiny_frames()
    data = tmp_path / "data"
    write_tiny(str(data))
    inter["weight"] = inter["weight"].astype("float32")
    inter.loc[2, "weight"] = bad
    rewrite_interactions(data, inter)  # as another tool would write it: no contract cast
    report = validate.run(params, data_dir=str(data))
    assert not report.success and report.reference_updated is False
    rule = (
        "interactions.expect_column_values_to_not_be_null[weight]"
        if bad != bad  # NaN is a missing weight
        else "interactions.expect_column_values_to_be_between[weight]"
    )
    assert rule in report.failed_expectations, report.summary()
    assert report.quarantine_path


def test_a_ten_million_character_item_id_fails_the_length_rule(params, tmp_path):
    inter, items, _ = tiny_frames()
    huge = "x" * 10_000_000
    inter.loc[0, "item_id"] = huge
    items.loc[0, "item_id"] = huge
    report = _run(params, tmp_path, inter=inter, items=items)
    found = set(report.failed_expectations)
    assert "interactions.expect_column_value_lengths_to_be_between[item_id]" in found
    assert "items.expect_column_value_lengths_to_be_between[item_id]" in found
    assert "validation.max_id_length" in report.summary()
    assert len(report.to_json()) < 100_000  # examples are clipped, not 10 MB each
    assert (
        "(10000000 characters)" in report.summary() or "(10000000 characters)" in report.to_json()
    )


@pytest.mark.parametrize("bad", ["   ", " u1", "u1 ", "u\x001", "u1\n"])
def test_blank_padded_or_control_character_ids_fail(params, tmp_path, bad):
    inter, _, users = tiny_frames()
    inter.loc[inter["user_id"] == "u3", "user_id"] = bad
    users.loc[users["user_id"] == "u3", "user_id"] = bad
    report = _run(params, tmp_path, inter=inter, users=users)
    found = set(report.failed_expectations)
    assert "interactions.expect_column_values_to_match_regex[user_id]" in found
    assert "users.expect_column_values_to_match_regex[user_id]" in found


def test_a_first_batch_with_a_single_user_is_not_accepted(params, tmp_path):
    inter, _, users = tiny_frames()
    inter["user_id"] = "u1"
    inter["timestamp"] = [1_600_000_000 + k for k in range(len(inter))]
    report = _run(params, tmp_path, inter=inter, users=users)
    assert report.reference_snapshot_id is None  # the first batch: no reference
    assert not report.success and not report.reference_updated
    assert (
        "interactions.expect_column_unique_value_count_to_be_between[user_id]"
        in report.failed_expectations
    )
    assert not Path(params.validation.reference_dir, "snapshot.json").exists()


@pytest.mark.parametrize("titles", [["", "", "", "D"], [None, None, None, None], [" "] * 4])
def test_a_first_batch_without_titles_is_not_accepted(params, tmp_path, titles):
    _, items, _ = tiny_frames()
    items["title"] = titles
    report = _run(params, tmp_path, items=items)
    assert not report.success and not report.reference_updated
    assert "items_titles.expect_column_values_to_be_between[titled_share]" in (
        report.failed_expectations
    )
    failure = next(f for f in report.failures if f.table == "items_titles")
    assert failure.examples[0]["titled_items"] == titles.count("D")


def test_a_catalog_without_titles_passes_when_the_rule_is_off(params, tmp_path):
    _, items, _ = tiny_frames()
    items["title"] = ""
    report = _run(params.with_overrides({"validation.min_title_share": 0.0}), tmp_path, items=items)
    assert report.success, report.summary()


def test_the_tiny_batch_passes_every_absolute_rule(params, tmp_path):
    report = _run(params, tmp_path)
    assert report.success, report.summary()
    assert {c.table for c in report.checks} >= {"interactions", "items", "users", "items_titles"}
    assert not pd.isna(report.stats["rows"]["interactions"])


def test_ids_only_data_from_a_csv_without_items_file_is_not_held_to_titles(params, tmp_path):
    """An implicit log of (user, item) ids has no titles by nature: the title rule is
    for item tables that were given, so a plain interactions CSV passes the gate."""
    from pipelines import ingest

    inter, _, _ = tiny_frames()
    csv = tmp_path / "plays.csv"
    inter[["user_id", "item_id"]].to_csv(csv, index=False)
    data = tmp_path / "data"
    manifest = ingest.run(params, source="csv", path=str(csv), out_dir=str(data))
    assert manifest["item_features"] == "none"
    report = validate.run(params, data_dir=str(data))
    assert report.success, report.summary()
    assert "items_titles" not in {c.table for c in report.checks}
