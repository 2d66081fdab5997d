"""Stage `validate`: the data contract gate in front of everything that trains.

`run(params, data_dir=..., reference_dir=None) -> ValidationReport` checks a dataset
directory (local or s3://) with Great Expectations suites: schema and dtypes, non-null
keys, duplicate rows, referential integrity, value ranges, and against the last accepted
reference snapshot also volume and drift. Data Docs and validation.json are written to
`<validation.docs_dir>/<snapshot id>/`.

- Fail: the whole batch directory is moved to `<validation.quarantine_dir>/<snapshot id>/`
  (with validation.json beside its files); the reference is untouched.
- Pass: the batch is copied, whole, as the new reference (the first batch has no
  reference, so volume/drift are skipped with a "no reference yet" note).

Running it again on the same accepted batch gives the same verdict and leaves the same
reference. CLI: `shortlist validate DATA [--reference DIR]` (exit 1 on failure).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from shortlist.errors import ShortlistError

if TYPE_CHECKING:
    from shortlist.config import Params
    from shortlist.validation.report import ValidationReport


def run(params: Params, *, data_dir: str, reference_dir: str | None = None) -> ValidationReport:
    """Validate `data_dir`; quarantine it on failure, make it the reference on success."""
    from shortlist.storage import is_remote
    from shortlist.validation import quarantine as q
    from shortlist.validation.batch import load_batch
    from shortlist.validation.gate import run_targets
    from shortlist.validation.reference import load_reference, publish_reference, same_place
    from shortlist.validation.report import ValidationReport
    from shortlist.validation.suites import build_targets

    started = time.perf_counter()
    vp = params.validation
    endpoint = params.storage.s3_endpoint_url
    data_dir, reference_dir = str(data_dir), str(reference_dir or vp.reference_dir)
    if same_place(data_dir, reference_dir):
        raise ShortlistError(f"{data_dir} is the reference itself; validate a new batch instead")
    if is_remote(vp.docs_dir):
        raise ShortlistError("validation.docs_dir must be a local directory (Data Docs)")

    batch = load_batch(data_dir, endpoint_url=endpoint)
    reference = load_reference(reference_dir, endpoint_url=endpoint)
    now = time.time()
    validated_at = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    key = q.safe_name(batch.snapshot_id)

    targets, notes = build_targets(batch, reference, vp, now)
    docs_dir = Path(vp.docs_dir) / key
    shutil.rmtree(docs_dir, ignore_errors=True)  # re-runs replace the batch's docs, not pile up
    gate = run_targets(
        targets, docs_dir=docs_dir, run_name=f"{key}-{validated_at}", example_rows=vp.example_rows
    )

    report = ValidationReport(
        success=not gate.failures,
        data_dir=data_dir,
        snapshot_id=batch.snapshot_id,
        reference_dir=reference_dir,
        reference_snapshot_id=reference.snapshot_id if reference is not None else None,
        checks=gate.checks,
        failures=gate.failures,
        notes=notes,
        stats=_stats(batch, reference, targets),
        docs_path=gate.docs_path,
        validated_at=validated_at,
    )
    if report.success:
        if reference is not None and reference.checksums == batch.checksums:
            report.notes.append("batch is already the reference; reference left as it was")
        else:
            publish_reference(data_dir, reference_dir, batch.manifest, endpoint_url=endpoint)
            report.reference_updated = True
    else:
        report.quarantine_path = q.destination(vp.quarantine_dir, key, endpoint_url=endpoint)
    report.duration_s = time.perf_counter() - started
    if report.quarantine_path:
        q.quarantine(data_dir, report.quarantine_path, report.to_json(), endpoint_url=endpoint)
    (docs_dir / "validation.json").write_text(report.to_json())
    return report


def _stats(batch, reference, targets) -> dict:
    """Row counts, and the drift statistics that were checked (for trends over batches)."""

    def rows(b) -> dict:
        return {name: (None if df is None else len(df)) for name, df in b.tables.items()}

    out: dict = {"rows": rows(batch)}
    if reference is not None:
        out["reference_rows"] = rows(reference)
    for target in targets:
        if target.name in ("interactions_drift", "interactions_per_user"):
            out[target.name] = target.frame.to_dict("records")
    return out
