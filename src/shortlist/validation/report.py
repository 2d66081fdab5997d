"""The outcome of one validation run: what was checked, what failed, where things went.

Light on purpose (no Great Expectations import), so the CLI, DAGs and tests can read a
report without paying for GX. Every value in `to_dict()` is plain JSON: NaN becomes
null and numpy scalars become Python numbers.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from shortlist.errors import DataValidationError


def jsonable(value: Any) -> Any:
    """Recursively turn numpy/pandas values into JSON-able Python values (NaN -> None)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        return jsonable(value.tolist())  # numpy scalars and arrays
    if isinstance(value, float):
        return None if math.isnan(value) else (str(value) if math.isinf(value) else value)
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return None
    except ImportError:  # pragma: no cover - pandas is a hard dependency
        pass
    return str(value)


@dataclass
class Check:
    """One expectation that ran (passed or failed), as it appears in the GX results."""

    table: str
    expectation: str
    kwargs: dict[str, Any]
    success: bool

    @property
    def column(self) -> str | None:
        col = self.kwargs.get("column")
        if col is None and "column_list" in self.kwargs:
            return ",".join(self.kwargs["column_list"])
        return col


@dataclass
class Failure:
    """A failed expectation: enough to act on without opening Data Docs."""

    table: str
    expectation: str
    kwargs: dict[str, Any]
    unexpected_count: int | None = None
    element_count: int | None = None
    observed_value: Any = None
    examples: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    description: str | None = None  # the rule in words, naming its params key

    @property
    def column(self) -> str | None:
        return Check(self.table, self.expectation, self.kwargs, False).column

    def headline(self) -> str:
        args = ", ".join(f"{k}={_short(v)}" for k, v in self.kwargs.items())
        text = f"[{self.table}] {self.expectation}({args})"
        rule = f" (rule: {self.description})" if self.description else ""
        if self.error:
            return f"{text}: could not be evaluated: {self.error}{rule}"
        if self.unexpected_count is not None:
            of = f" of {self.element_count}" if self.element_count is not None else ""
            return f"{text}: {self.unexpected_count} unexpected{of}{rule}"
        return f"{text}: observed {_short(self.observed_value)}{rule}"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class ValidationReport:
    """The result of `pipelines.validate.run`: success, failures, notes and paths.

    `success` is True only when every expectation passed. On failure the batch has been
    moved to `quarantine_path`; on success it has been copied as the new reference.
    """

    success: bool
    data_dir: str
    snapshot_id: str
    reference_dir: str
    reference_snapshot_id: str | None
    checks: list[Check] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    docs_path: str | None = None
    quarantine_path: str | None = None
    reference_updated: bool = False
    validated_at: str = ""
    duration_s: float = 0.0

    @property
    def failed_expectations(self) -> list[str]:
        """`table.expectation_type[column]` names of the failures, for tests and logs."""
        out = []
        for f in self.failures:
            col = f.column
            out.append(f"{f.table}.{f.expectation}" + (f"[{col}]" if col else ""))
        return out

    def summary(self) -> str:
        """One screen: verdict, every failed expectation with counts and example rows."""
        verdict = "PASSED" if self.success else "FAILED"
        lines = [
            f"validation {verdict}: {self.data_dir} (snapshot {self.snapshot_id or '?'}); "
            f"{len(self.checks) - len(self.failures)}/{len(self.checks)} expectations passed "
            f"in {self.duration_s:.2f}s",
        ]
        ref = self.reference_snapshot_id or "none"
        lines.append(f"reference: {self.reference_dir} (snapshot {ref})")
        for failure in self.failures:
            lines.append("  FAIL " + failure.headline())
            for row in failure.examples:
                lines.append("       e.g. " + _short(json.dumps(jsonable(row)), 110))
        for note in self.notes:
            lines.append(f"  note: {note}")
        if self.quarantine_path:
            lines.append(f"quarantined (moved) to: {self.quarantine_path}")
        if self.reference_updated:
            lines.append(f"accepted as the new reference: {self.reference_dir}")
        if self.docs_path:
            lines.append(f"data docs: {self.docs_path}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["failed_expectations"] = self.failed_expectations
        return jsonable(raw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def raise_for_failure(self) -> None:
        """Raise DataValidationError (one-line reason) when the batch failed."""
        if not self.success:
            names = ", ".join(self.failed_expectations) or "see report"
            where = f"; quarantined at {self.quarantine_path}" if self.quarantine_path else ""
            raise DataValidationError(f"data validation failed: {names}{where}")
