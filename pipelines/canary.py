"""Stage: check a slot's bundle before promotion (ANN recall, live-path recall, consistency).

`run(params, root=None, slot='idle') -> report`; `report['passed']` gates promotion (the
CLI exits 1 when False). The report is written into the slot as canary.json, where
`promote` reads it, and logged to MLflow. A bundle that fails to load (tampered file,
manifest naming another model, half-built slot) is a failed canary, not a crash.
"""

from __future__ import annotations

import time
from typing import Any

from shortlist.config import Params
from shortlist.tracking import metric_key


def run(params: Params, *, root: str | None = None, slot: str = "idle") -> dict[str, Any]:
    from shortlist.bundle.bundle import load_bundle
    from shortlist.bundle.slots import Slots
    from shortlist.canary import run_checks
    from shortlist.errors import BundleError

    slots = Slots(root or params.bundle.root, endpoint_url=params.storage.s3_endpoint_url)
    name = slots.resolve(slot)
    location = slots.slot_location(name)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        bundle = load_bundle(location, cache_dir=params.bundle.cache_dir)
    except BundleError as exc:
        report: dict[str, Any] = {
            "bundle_id": slots.bundle_id(name),
            "passed": False,
            "reasons": [f"load: {exc}"],
            "checks": {},
        }
    else:
        report = run_checks(bundle, params)
    report.update(slot=name, location=location, checked_at=started)
    if report["bundle_id"] is not None:  # an empty slot has nowhere to keep a report
        slots.write_canary(name, report)
    _log(params, report)
    return report


def _log(params: Params, report: dict[str, Any]) -> None:
    from shortlist import tracking

    tags = {"bundle_id": report["bundle_id"], "slot": report["slot"], "passed": report["passed"]}
    with tracking.start_run(params, f"canary-{report['slot']}", "canary", tags):
        import mlflow

        metrics = {"passed": float(report["passed"])}
        for check, values in report.get("checks", {}).items():
            for key, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    metrics[metric_key(f"{check}.{key}")] = float(value)
        mlflow.log_metrics(metrics)
        mlflow.log_dict(report, "canary.json")
