"""Load test across swaps: a real `shortlist serve` process under continuous requests while
a promotion and then a rollback happen.

Asserts: zero failed requests; zero mixed responses (every response's items exist in the
bundle it names, and its scores are that bundle's own user tower . item vectors, which
differ measurably from the other bundle's); p99 latency around the swaps within 2x the
steady-state p99; the rollback visible to clients within 1 s.

The swap windows hold ~300-450 requests, so their p99 is about the 3rd slowest: one
hiccup of the shared host (tails of 20-40 ms also appear in steady state) can move it.
The latency check therefore gets up to `ATTEMPTS` runs, each on a fresh server and a
fresh copy of the bundles; every run must pass every other check. A swap that slows
requests (a load on the request path, GIL-holding stalls) misses 2x in every run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from shortlist.bundle.bundle import load_bundle
from shortlist.bundle.slots import Slots
from shortlist.serving.loadgen import free_port, run_load, wait_ready
from shortlist.serving.swapload import swap_under_load, verify_responses
from tests.serving.conftest import copy_live_root

MAX_REQUESTS = 30_000
MAX_SECONDS = 60.0
PHASE_SECONDS = 3.0  # steady state before, and settling time after, each flip
ATTEMPTS = 3


def _start_server(params, root: str, tmp_path: Path) -> tuple[subprocess.Popen, str]:
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(), sort_keys=False))
    port = free_port()
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed with the process
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "shortlist", "serve", "--params", str(params_file)]
    cmd += ["--root", root, "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    return proc, f"http://127.0.0.1:{port}"


def test_no_failed_or_mixed_responses_across_promotion_and_rollback(world, tmp_path):
    ratios = []
    for attempt in range(1, ATTEMPTS + 1):
        st, sw = _swap_once(world, tmp_path / f"attempt-{attempt}")
        ratios.append(sw["p99_ms"] / st["p99_ms"])
        if ratios[-1] <= 2:
            break
    shown = [round(r, 3) for r in ratios]
    assert ratios[-1] <= 2, f"p99 during swaps / steady p99, {len(ratios)} runs: {shown}"


def _swap_once(world, work: Path) -> tuple[dict, dict]:
    """One server, a promotion and a rollback under load, every check but latency's;
    returns the steady and during-swaps latency summaries."""
    work.mkdir(parents=True)
    root, a, b = copy_live_root(world, work / "bundles")
    params = world.params.with_overrides(
        {
            "serving.impressions_dir": str(work / "impressions"),
            "serving.poll_seconds": 0.1,
            "serving.log_level": "info",
        }
    )
    bundles = {
        a: load_bundle(Slots(root).slot_location("live")),
        b: load_bundle(Slots(root).slot_location("idle")),
    }
    known = sorted(bundles[a].histories)[:100]

    def make_request(n: int):
        if n % 10 == 9:
            return "POST", "/recommend", {"user_id": f"new-{n}", "k": 10}
        return "POST", "/recommend", {"user_id": known[n % len(known)], "k": 10}

    proc, url = _start_server(params, root, work)
    try:
        assert wait_ready(url, timeout=600)["bundle_id"] == a
        run_load(url, make_request, max_requests=100, max_seconds=20)  # warm-up
        run = swap_under_load(
            url,
            Slots(root),
            make_request,
            phase_seconds=PHASE_SECONDS,
            max_requests=MAX_REQUESTS,
            max_seconds=MAX_SECONDS,
            promote_timeout=20,
        )
    finally:
        proc.terminate()
        proc.wait(30)
    summary = run.summary()

    assert summary["failed"] == 0, summary["failed_examples"]
    assert summary["bundles_answering"] == sorted([a, b])
    checked, problems = 0, []
    for bid, bundle in bundles.items():
        n, found = verify_responses(bundle, run.bodies(bid))
        checked, problems = checked + n, problems + found
    assert not problems, problems[:3]
    assert run.bodies(b), "no response came from the promoted bundle"
    # The score check has power: bundle A's tower does not reproduce B's scores.
    probe = next(r for r in run.bodies(b) if r["strategy"] == "personalized")
    _, against_a = verify_responses(bundles[a], [probe])
    assert against_a and "mixed response" in against_a[0], against_a

    # No flapping: once B answered, requests sent before the rollback are all B, and
    # requests sent after A answered again are all A.
    assert summary["flapped"] == 0
    assert summary["rollback_visible_seconds"] <= 1.0, summary
    st, sw = summary["steady"], summary["during_swaps"]
    print(
        f"\nswap test: {summary['requests']} requests, {checked} personalised responses "
        f"score-checked; promotion visible in {summary['promotion_visible_seconds']}s, "
        f"rollback in {summary['rollback_visible_seconds']}s; steady {st}; during swaps {sw}"
    )
    return st, sw
