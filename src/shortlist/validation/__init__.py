"""The data validation gate (Great Expectations suites, quarantine, reference snapshot).

`pipelines.validate.run` is the entry point; `report.ValidationReport` is what it
returns. Great Expectations is imported only when validation actually runs.
"""

from shortlist.validation.report import Check, Failure, ValidationReport

__all__ = ["Check", "Failure", "ValidationReport"]
