"""A promotion and a rollback under continuous load, and the checks that judge them.

Shared by the swap test (small catalog) and `benchmarks/serving_latency.py` (large
catalogs): `swap_under_load` drives a running `shortlist serve` with closed-loop clients
while it flips the live pointer to the idle slot and back; `verify_responses` proves no
response mixed two bundles: every item exists in the bundle the response names, and every
personalised score is that bundle's own user tower . item vector (two bundles trained
apart score measurably differently, so a mix cannot pass).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from shortlist.models.vectors import serving_query_vectors
from shortlist.serving.loadgen import RequestFactory, Sample, run_load, summarise

if TYPE_CHECKING:
    from shortlist.bundle.bundle import LoadedBundle
    from shortlist.bundle.slots import Slots


def verify_responses(bundle: LoadedBundle, responses: list[dict[str, Any]], atol: float = 1e-4):
    """(personalised responses score-checked, problems): each problem names a response
    whose items are missing from `bundle` or whose retrieval scores are not its own."""
    row_of = {str(i): r for r, i in enumerate(bundle.item_ids)}
    problems: list[str] = []
    for r in responses:
        missing = [it["item_id"] for it in r["items"] if it["item_id"] not in row_of]
        if missing:
            problems.append(f"{r['request_id']}: items {missing[:3]} not in {bundle.bundle_id}")
    personal = [r for r in responses if r["strategy"] == "personalized" and r["items"]]
    personal = [r for r in personal if all(it["item_id"] in row_of for it in r["items"])]
    if not personal:
        return 0, problems
    users = None
    if bundle.users is not None and "user_id" in bundle.users.columns:
        table = bundle.users.assign(user_id=bundle.users["user_id"].astype(str))
        users = table.drop_duplicates("user_id").set_index("user_id")
    uids = [r["user_id"] or "" for r in personal]
    hists = [[i for i in bundle.histories.get(u, []) if i in row_of] for u in uids]
    stamps = [r["served_at"] for r in personal]
    frame = None if users is None else users.reindex(uids).reset_index()
    queries = serving_query_vectors(
        bundle.retriever,
        uids,
        hists,
        users=frame,
        timestamps=stamps,
        width=bundle.item_vectors.shape[1],
    )
    for r, q in zip(personal, queries, strict=True):
        rows = [row_of[it["item_id"]] for it in r["items"]]
        got = np.array([it["retrieval_score"] for it in r["items"]], dtype=np.float64)
        want = np.asarray(bundle.item_vectors[np.sort(rows)], dtype=np.float64)
        want = want[np.argsort(np.argsort(rows))] @ q
        if not np.allclose(got, want, atol=atol):
            err = float(np.abs(got - want).max())
            problems.append(f"mixed response {r['request_id']}: scores off by up to {err:.4f}")
    return len(personal), problems


@dataclass
class SwapRun:
    """What happened: every sample and the perf_counter times of each event."""

    samples: list[Sample]
    live: str  # bundle id live before the promotion
    promoted: str  # bundle id of the idle slot that was promoted
    t_begin: float
    t_promote: float
    t_promoted_seen: float  # first response from the promoted bundle
    t_rollback: float
    t_rollback_done: float  # the pointer write returned
    t_rollback_seen: float  # first response from the old bundle again

    def bodies(self, bundle_id: str) -> list[dict[str, Any]]:
        return [
            s.body for s in self.samples if s.status == 200 and s.body["bundle_id"] == bundle_id
        ]

    def summary(self) -> dict[str, Any]:
        """Failures, the bundles that answered, flapping, visibility times, and latency
        in steady state vs in the windows from each flip until it was seen (+0.5 s)."""
        ok = [s for s in self.samples if s.status == 200]
        failed = [s for s in self.samples if s.status != 200]
        ids = sorted({s.body["bundle_id"] for s in ok})
        between = [s for s in ok if self.t_promoted_seen < s.start < self.t_rollback]
        after = [s for s in ok if s.start > self.t_rollback_seen]
        flapped = sum(s.body["bundle_id"] != self.promoted for s in between)
        flapped += sum(s.body["bundle_id"] != self.live for s in after)
        steady = [s for s in self.samples if self.t_begin + 0.5 < s.start < self.t_promote]
        swap = [s for s in self.samples if self.t_promote <= s.start <= self.t_promoted_seen + 0.5]
        swap += [
            s for s in self.samples if self.t_rollback <= s.start <= self.t_rollback_seen + 0.5
        ]
        st, sw = summarise(steady), summarise(swap)
        return {
            "requests": len(self.samples),
            "failed": len(failed),
            "failed_examples": [f"{s.status} {s.error or s.body}" for s in failed[:3]],
            "bundles_answering": ids,
            "flapped": int(flapped),
            "promotion_visible_seconds": round(self.t_promoted_seen - self.t_promote, 3),
            "rollback_seconds": round(self.t_rollback_done - self.t_rollback, 3),
            "rollback_visible_seconds": round(self.t_rollback_seen - self.t_rollback_done, 3),
            "steady": st,
            "during_swaps": sw,
            "p99_ratio": round(sw["p99_ms"] / st["p99_ms"], 3) if st.get("p99_ms") else None,
        }


def _first_from(samples: list[Sample], bundle_id: str, after: float, timeout: float) -> float:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        for s in list(samples):
            if s.start >= after and s.status == 200 and s.body.get("bundle_id") == bundle_id:
                return s.end
        time.sleep(0.01)
    raise TimeoutError(f"no response from bundle {bundle_id} within {timeout}s")


def swap_under_load(
    url: str,
    slots: Slots,
    make_request: RequestFactory,
    *,
    phase_seconds: float = 3.0,
    concurrency: int = 2,
    max_requests: int = 100_000,
    max_seconds: float = 120.0,
    promote_timeout: float = 120.0,
) -> SwapRun:
    """Load `url` continuously; after `phase_seconds` promote the idle slot of `slots`
    (a `shortlist.bundle.slots.Slots`), wait until the server answers from it, hold
    `phase_seconds`, roll back, wait until the old bundle answers again, hold, stop.

    `promote_timeout` covers the server loading the new bundle in the background."""
    live = slots.bundle_id("live")
    promoted = slots.bundle_id("idle")
    if not live or not promoted:
        raise ValueError(f"need a live and an idle bundle under {slots.root}")
    stop = threading.Event()
    samples: list[Sample] = []
    box: dict[str, list[Sample]] = {}

    def load() -> None:
        box["samples"] = run_load(
            url,
            make_request,
            max_requests=max_requests,
            max_seconds=max_seconds,
            concurrency=concurrency,
            stop=stop,
            sink=samples,
        )

    thread = threading.Thread(target=load, daemon=True)
    t_begin = time.perf_counter()
    thread.start()
    try:
        time.sleep(phase_seconds)
        t_promote = time.perf_counter()
        slots.promote()
        t_seen = _first_from(samples, promoted, t_promote, promote_timeout)
        time.sleep(phase_seconds)
        t_rollback = time.perf_counter()
        slots.rollback()
        t_rollback_done = time.perf_counter()
        t_back = _first_from(samples, live, t_rollback_done, 10.0)
        time.sleep(phase_seconds)
    finally:
        stop.set()
        thread.join(60)
    return SwapRun(
        samples=box.get("samples", samples),
        live=live,
        promoted=promoted,
        t_begin=t_begin,
        t_promote=t_promote,
        t_promoted_seen=t_seen,
        t_rollback=t_rollback,
        t_rollback_done=t_rollback_done,
        t_rollback_seen=t_back,
    )
