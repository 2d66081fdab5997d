"""Stage: the scheduled canary on the live slot, with automatic rollback.

Runs the canary (ANN recall@k vs exact search on sampled users, live-path recall,
consistency) on the live bundle, measures live-path latency through the serving code,
and counts consecutive breaches in `canary_state.json` under the artifact root.
`canary.breaches_before_rollback` breaches in a row roll back to the previous bundle
(and move the registry's `champion` back); one bad reading alone does not, since a
single noisy sample should not flap production. The rollback names the bundle that was
measured and happens only while that bundle is still live: a person's rollback or
promotion during the check (which takes a minute on a large catalog) is never undone.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from shortlist.config import Params

STATE = "canary_state.json"


def live_latency(params: Params, location: str, *, requests: int = 200) -> dict[str, float]:
    """p50/p99 milliseconds of /recommend's code path on the live bundle, in process."""
    from shortlist.bundle.bundle import load_bundle
    from shortlist.serving.recommend import prepare, recommend
    from shortlist.serving.schemas import RecommendRequest

    sb = prepare(load_bundle(location, cache_dir=params.bundle.cache_dir), location)
    users = list(sb.bundle.histories)[:requests] or [None]
    rng = np.random.default_rng(params.project.seed)
    timings = []
    for i in range(requests):
        user = users[i % len(users)]
        req = RecommendRequest(user_id=user, k=20) if user else RecommendRequest(recent_items=[])
        t0 = time.perf_counter()
        recommend(sb, req, params, rng)
        timings.append((time.perf_counter() - t0) * 1000)
    return {
        "latency_p50_ms": float(np.percentile(timings, 50)),
        "latency_p99_ms": float(np.percentile(timings, 99)),
    }


def run(params: Params, *, root: str | None = None) -> dict[str, Any]:
    """Check the live slot; returns the report with `breaches` and `rolled_back`."""
    from pipelines import canary, release
    from shortlist.bundle.slots import Slots
    from shortlist.storage import open_store

    root = root or params.bundle.root
    slots = Slots(root, endpoint_url=params.storage.s3_endpoint_url)
    report = canary.run(params, root=root, slot="live")
    if report["passed"]:
        report["latency"] = live_latency(params, slots.slot_location(report["slot"]))
        _log_latency(params, report)
    store = open_store(root, endpoint_url=params.storage.s3_endpoint_url)
    state = json.loads(store.read_bytes(STATE)) if store.exists(STATE) else {}
    same_bundle = state.get("bundle_id") == report["bundle_id"]
    breaches = (state.get("breaches", 0) if same_bundle else 0) + (0 if report["passed"] else 1)
    report["breaches"] = breaches
    report["rolled_back"] = False
    if breaches >= params.canary.breaches_before_rollback:
        from shortlist.errors import PromotionRefused

        try:
            back = release.rollback_live(
                params,
                root=root,
                reason=f"{breaches} live canary breaches in a row",
                expected_live=report["bundle_id"],
            )
        except PromotionRefused as exc:
            # The measured bundle is no longer live (someone acted meanwhile) or there is
            # nothing to go back to: nothing changes, and the report says why.
            report["rollback_refused"] = str(exc)
        else:
            report["rolled_back"] = True
            report["rollback"] = back
            breaches = 0
    store.write_bytes(
        STATE,
        json.dumps(
            {"bundle_id": report["bundle_id"], "breaches": breaches, "at": report["checked_at"]}
        ).encode(),
    )
    return report


def _log_latency(params: Params, report: dict[str, Any]) -> None:
    from shortlist import tracking

    tags = {"bundle_id": report["bundle_id"], "slot": report["slot"]}
    with tracking.start_run(params, "live-latency", "monitor", tags):
        import mlflow

        mlflow.log_metrics(report["latency"])
