"""The validation gate on real data: ml-100k passes; each corrupted copy fails, named.

The clean dataset is imported once per module (pipelines.ingest). Each test works on
its own copy, so quarantine moves and reference updates never leak between tests.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines import validate
from shortlist.cli import main
from shortlist.data import schema
from shortlist.validation.suites import NO_REFERENCE_NOTE
from tests.validation.tiny import rewrite_interactions

REPO = Path(__file__).resolve().parents[2]


def build_ml100k(params, ml100k_path: Path, out: Path) -> None:
    """The dataset directory under test (switch importers here, nowhere else)."""
    from pipelines import ingest

    ingest.run(params, source="movielens-100k", path=str(ml100k_path), out_dir=str(out))


@pytest.fixture(scope="module")
def clean_ml100k(ml100k_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shortlist.config import load_params

    out = tmp_path_factory.mktemp("ml100k") / "data"
    build_ml100k(load_params(REPO / "params.yaml"), ml100k_path, out)
    return out


def digests(path: Path) -> dict[str, str]:
    """sha256 of every file under path (relative names), to prove nothing changed or was lost."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def read(path: Path, table: str) -> pd.DataFrame:
    return pq.read_table(path / table).to_pandas()


def _null_user(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[10, schema.USER_ID] = None
    return df


def _unknown_item(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[20, schema.ITEM_ID] = "no-such-item"
    return df


def _negative_weight(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[30, schema.WEIGHT] = -1.0
    return df


def _future_timestamp(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[40, schema.TIMESTAMP] = int(time.time()) + 10 * 24 * 3600
    return df


def _volume_drop(df: pd.DataFrame) -> pd.DataFrame:
    return df.sample(frac=0.1, random_state=0).reset_index(drop=True)


def _duplicates(df: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([df, df.iloc[[1, 2, 3]]], ignore_index=True)


def _weight_as_strings(df: pd.DataFrame) -> pd.DataFrame:
    df[schema.WEIGHT] = df[schema.WEIGHT].astype(str)
    return df


CORRUPTIONS = {
    "null_user_id": (_null_user, "interactions", "expect_column_values_to_not_be_null", "user_id"),
    "unknown_item": (
        _unknown_item,
        "interactions_references",
        "expect_column_values_to_be_in_set",
        "item_exists",
    ),
    "negative_weight": (
        _negative_weight,
        "interactions",
        "expect_column_values_to_be_between",
        "weight",
    ),
    "future_timestamp": (
        _future_timestamp,
        "interactions",
        "expect_column_values_to_be_between",
        "timestamp",
    ),
    "volume_drop": (_volume_drop, "interactions", "expect_table_row_count_to_be_between", None),
    "duplicates": (
        _duplicates,
        "interactions",
        "expect_compound_columns_to_be_unique",
        "user_id,item_id,timestamp",
    ),
    "weight_as_strings": (
        _weight_as_strings,
        "interactions",
        "expect_column_values_to_be_of_type",
        "weight",
    ),
}


def test_clean_ml100k_passes_then_is_idempotent(params, clean_ml100k: Path, tmp_path: Path):
    data = tmp_path / "batch"
    shutil.copytree(clean_ml100k, data)
    before = digests(data)
    ref = Path(params.validation.reference_dir)

    report = validate.run(params, data_dir=str(data))

    assert report.success, report.summary()
    assert report.failures == []
    assert NO_REFERENCE_NOTE in report.notes and "no reference yet" in report.summary()
    assert report.reference_updated and report.quarantine_path is None
    assert digests(data) == before  # the batch itself is untouched
    assert digests(ref) == {
        k: v for k, v in before.items() if k in (*schema.TABLES, "snapshot.json")
    }
    # Every contract family ran as a GX expectation on the right table.
    ran = {(c.table, c.expectation) for c in report.checks}
    assert ("interactions", "expect_compound_columns_to_be_unique") in ran
    assert ("interactions_references", "expect_column_values_to_be_in_set") in ran
    assert ("snapshot", "expect_column_values_to_be_in_set") in ran
    docs = Path(report.docs_path)
    assert docs.name == "index.html" and docs.exists()
    assert list((docs.parent / "validations").rglob("*.html"))
    saved = json.loads((docs.parent / "validation.json").read_text())
    assert saved["success"] is True and saved["snapshot_id"] == report.snapshot_id

    again = validate.run(params, data_dir=str(data))

    assert again.success, again.summary()
    assert again.reference_snapshot_id == report.snapshot_id
    assert digests(ref) == {
        k: v for k, v in before.items() if k in (*schema.TABLES, "snapshot.json")
    }
    assert digests(data) == before
    tables = {c.table for c in again.checks}
    assert {"interactions_drift", "interactions_per_user"} <= tables  # drift ran this time
    assert any(
        c.expectation == "expect_table_row_count_to_be_between" and c.kwargs.get("min_value", 0) > 1
        for c in again.checks
    )
    assert not Path(params.validation.quarantine_dir).exists()


def test_accepted_batch_becomes_the_reference(params, clean_ml100k: Path, tmp_path: Path):
    ref = Path(params.validation.reference_dir)
    shutil.copytree(clean_ml100k, ref)
    data = tmp_path / "batch"
    shutil.copytree(clean_ml100k, data)
    inter = read(data, schema.INTERACTIONS)
    newest = inter.sort_values(schema.TIMESTAMP).iloc[: int(len(inter) * 0.95)]
    rewrite_interactions(data, newest.reset_index(drop=True))
    new_snapshot = json.loads((data / "snapshot.json").read_text())["snapshot_id"]

    report = validate.run(params, data_dir=str(data))

    assert report.success, report.summary()
    assert report.reference_updated
    assert json.loads((ref / "snapshot.json").read_text())["snapshot_id"] == new_snapshot
    assert digests(ref) == {k: v for k, v in digests(data).items() if k in digests(ref)}
    assert len(read(ref, schema.INTERACTIONS)) == len(newest)
    assert not list(ref.parent.glob(".reference.*"))  # no temp or old copies left behind


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupted_copy_fails_and_is_quarantined_whole(
    name: str, params, clean_ml100k: Path, tmp_path: Path
):
    corrupt, table, expectation, column = CORRUPTIONS[name]
    ref = Path(params.validation.reference_dir)
    shutil.copytree(clean_ml100k, ref)
    ref_before = digests(ref)
    data = tmp_path / "batch"
    shutil.copytree(clean_ml100k, data)
    rewrite_interactions(data, corrupt(read(data, schema.INTERACTIONS)))
    batch_before = digests(data)
    rows = pq.read_metadata(data / schema.INTERACTIONS).num_rows

    report = validate.run(params, data_dir=str(data))

    assert not report.success
    matching = [
        f
        for f in report.failures
        if f.table == table and f.expectation == expectation and f.column == column
    ]
    assert matching, (
        f"{name}: expected {table}.{expectation}[{column}] in {report.failed_expectations}"
    )
    summary = report.summary()
    assert expectation in summary and report.docs_path in summary
    failure = matching[0]
    if name == "volume_drop":
        assert failure.observed_value == rows and failure.kwargs["min_value"] > rows
    elif name == "weight_as_strings":
        assert failure.observed_value == "str"
    else:
        assert failure.unexpected_count >= 1 and failure.examples
    # Moved whole: the batch is gone from its place, every byte is in quarantine.
    assert not data.exists()
    quarantined = Path(report.quarantine_path)
    assert quarantined.parent == Path(params.validation.quarantine_dir)
    assert quarantined.name == report.snapshot_id
    after = digests(quarantined)
    assert after.pop("validation.json")
    assert after == batch_before
    assert pq.read_metadata(quarantined / schema.INTERACTIONS).num_rows == rows
    saved = json.loads((quarantined / "validation.json").read_text())
    assert saved["success"] is False and saved["quarantine_path"] == str(quarantined)
    assert digests(ref) == ref_before  # the reference is untouched
    assert Path(report.docs_path).exists()
    assert (Path(report.docs_path).parent / "validation.json").exists()


def test_cli_exit_codes(clean_ml100k: Path, tmp_path: Path, capsys, monkeypatch):
    # Relative paths, as in params.yaml's defaults, resolved against the working directory.
    monkeypatch.chdir(tmp_path)
    sets = []
    for key in ("reference_dir", "quarantine_dir", "docs_dir"):
        sets += ["--set", f"validation.{key}=work/{key}"]
    shutil.copytree(clean_ml100k, "good")
    shutil.copytree(clean_ml100k, "bad")
    rewrite_interactions("bad", _negative_weight(read(Path("bad"), schema.INTERACTIONS)))
    argv = ["--params", str(REPO / "params.yaml"), *sets]

    assert main(["validate", "good", *argv]) == 0
    out = capsys.readouterr().out
    assert "validation PASSED" in out and "no reference yet" in out
    assert Path("work/reference_dir/snapshot.json").exists()
    assert list(Path("work/docs_dir").glob("*/index.html"))

    assert main(["validate", "bad", *argv]) == 1
    out = capsys.readouterr().out
    assert "validation FAILED" in out and "expect_column_values_to_be_between" in out
    assert "quarantined (moved) to" in out and not Path("bad").exists()
    assert len(list(Path("work/quarantine_dir").iterdir())) == 1

    assert main(["validate", "missing", *argv]) == 1
    assert "no dataset" in capsys.readouterr().err
