"""The whole gate on tiny datasets: broken shapes are findings, never crashes."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipelines import validate
from shortlist.data.io import write_dataset
from shortlist.validation.batch import load_batch
from tests.validation.tiny import T0, rewrite_interactions, tiny_frames, write_tiny


def names(report) -> set[str]:
    return set(report.failed_expectations)


def test_tiny_dataset_passes_and_writes_docs(params, tmp_path: Path):
    data = tmp_path / "data"
    write_tiny(str(data))

    report = validate.run(params, data_dir=str(data))

    assert report.success, report.summary()
    assert Path(report.docs_path).exists()
    assert json.loads((Path(report.docs_path).parent / "validation.json").read_text())["success"]


def test_missing_column_and_wrong_types_are_failed_expectations(params, tmp_path: Path):
    data = tmp_path / "data"
    write_tiny(str(data))
    inter = load_batch(str(data)).table("interactions").drop(columns="weight")
    inter["timestamp"] = inter["timestamp"].astype(str)
    rewrite_interactions(data, inter)

    report = validate.run(params, data_dir=str(data))

    assert not report.success
    found = names(report)
    assert "interactions.expect_column_to_exist[weight]" in found
    assert "interactions.expect_column_values_to_be_of_type[timestamp]" in found
    errored = [f for f in report.failures if f.error]
    assert errored and all(f.examples == [] for f in errored)  # evaluated-with-error, reported
    assert "could not be evaluated" in report.summary()


def test_missing_table_fails_the_snapshot_suite(params, tmp_path: Path):
    data = tmp_path / "data"
    write_tiny(str(data))
    (data / "users.parquet").unlink()

    report = validate.run(params, data_dir=str(data))

    assert not report.success
    assert "snapshot.expect_column_values_to_be_in_set[present]" in names(report)
    assert any("referential integrity not checked" in n for n in report.notes)
    assert Path(report.quarantine_path, "items.parquet").exists()


def test_drift_against_the_reference_is_checked(params, tmp_path: Path):
    ref, data = Path(params.validation.reference_dir), tmp_path / "data"
    write_tiny(str(ref))
    inter, items, users = tiny_frames()
    # Same volume, but every interaction is by a brand-new user with 6x the activity.
    inter["user_id"] = "u9"
    users = pd.concat([users, pd.DataFrame({"user_id": ["u9"], "age": [50]})], ignore_index=True)
    inter["timestamp"] = [T0 + k for k in range(len(inter))]
    write_dataset(str(data), inter, items, users, source="tiny")

    report = validate.run(params, data_dir=str(data))

    found = names(report)
    assert "interactions_drift.expect_column_values_to_be_between[new_user_share]" in found
    assert "interactions_per_user.expect_column_values_to_be_between[fold_change]" in found
    assert "interactions_drift.expect_column_values_to_be_between[new_item_share]" not in found
    drift = next(f for f in report.failures if f.column == "new_user_share")
    assert drift.examples[0]["new_user_share"] == 1.0


def test_s3_batch_is_quarantined_by_copy_then_delete_and_reference_published(params, s3):
    bucket = s3.new_bucket("validate")
    p = params.with_overrides(
        {
            "storage.s3_endpoint_url": s3.endpoint_url,
            "validation.reference_dir": f"s3://{bucket}/reference",
            "validation.quarantine_dir": f"s3://{bucket}/quarantine",
        }
    )
    good, bad = f"s3://{bucket}/batches/good", f"s3://{bucket}/batches/bad"
    write_tiny(good)
    inter, _, _ = tiny_frames()
    inter.loc[0, "weight"] = -5.0
    manifest = write_tiny(bad, inter)
    client = s3.client()

    ok = validate.run(p, data_dir=good)
    failed = validate.run(p, data_dir=bad)

    assert ok.success and ok.reference_updated, ok.summary()
    assert load_batch(p.validation.reference_dir).snapshot_id == ok.snapshot_id
    assert not failed.success
    assert failed.quarantine_path == f"s3://{bucket}/quarantine/{manifest['snapshot_id']}"
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert not any(k.startswith("batches/bad/") for k in keys)
    moved = {k.rsplit("/", 1)[1] for k in keys if k.startswith("quarantine/")}
    assert moved == {
        "interactions.parquet",
        "items.parquet",
        "users.parquet",
        "snapshot.json",
        "validation.json",
    }
    assert load_batch(failed.quarantine_path).checksums == {
        k: v for k, v in manifest["checksums"].items()
    }
