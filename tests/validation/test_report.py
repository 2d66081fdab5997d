"""The report: JSON-able, a readable summary, structured failures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shortlist.errors import DataValidationError
from shortlist.validation.report import Check, Failure, ValidationReport, jsonable


def report(success: bool) -> ValidationReport:
    failures = []
    if not success:
        failures.append(
            Failure(
                table="interactions",
                expectation="expect_column_values_to_be_between",
                kwargs={"column": "weight", "min_value": 0.0},
                unexpected_count=2,
                element_count=10,
                examples=[{"user_id": "u1", "weight": np.float32(-1.0)}],
            )
        )
    return ValidationReport(
        success=success,
        data_dir="data",
        snapshot_id="abc",
        reference_dir="ref",
        reference_snapshot_id=None,
        checks=[
            Check(
                "interactions", "expect_column_values_to_be_between", {"column": "weight"}, success
            )
        ],
        failures=failures,
        notes=["no reference yet: volume and drift checks skipped"],
        docs_path="docs/abc/index.html",
        quarantine_path=None if success else "q/abc",
    )


def test_jsonable_turns_numpy_and_nan_into_plain_json():
    value = {"a": np.int64(3), "b": [np.float32(1.5), float("nan")], "c": np.array([1, 2])}
    assert jsonable(value) == {"a": 3, "b": [1.5, None], "c": [1, 2]}


def test_summary_names_failure_counts_examples_notes_and_paths():
    text = report(False).summary()
    assert "validation FAILED" in text
    assert "[interactions] expect_column_values_to_be_between(column=weight, min_value=0.0)" in text
    assert "2 unexpected of 10" in text
    assert '"weight": -1.0' in text
    assert "no reference yet" in text
    assert "q/abc" in text and "docs/abc/index.html" in text


def test_to_dict_round_trips_through_json_and_lists_failed_names():
    data = json.loads(json.dumps(report(False).to_dict()))
    assert data["success"] is False
    assert data["failures"][0]["unexpected_count"] == 2
    assert data["failed_expectations"] == [
        "interactions.expect_column_values_to_be_between[weight]"
    ]


def test_raise_for_failure_only_on_failure():
    report(True).raise_for_failure()
    with pytest.raises(DataValidationError, match="weight"):
        report(False).raise_for_failure()
