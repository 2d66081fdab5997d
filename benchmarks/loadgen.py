"""Bounded load against a running `shortlist serve`: POST /recommend from N closed-loop clients.

Stops after --requests requests or --seconds seconds, whichever comes first, and prints
latency percentiles, throughput, failures and which bundle ids answered (a promotion
or rollback during the run shows up there). The generator itself is
`shortlist.serving.loadgen` (also used by the swap test and benchmarks/serving_latency.py).

    .venv/bin/python benchmarks/loadgen.py --url http://127.0.0.1:8000 \\
        --users u1 u2 u3 --requests 2000 --seconds 30 --concurrency 2 \\
        [--out benchmarks/results/loadgen.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import numpy as np

from shortlist.serving.loadgen import run_load, summarise, wait_ready

if __package__:  # imported as benchmarks.<name>
    from .provenance import provenance
else:  # run as a script: benchmarks/ is sys.path[0]
    from provenance import provenance


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--users", nargs="+", default=["new-user"], help="user ids to cycle through")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the summary JSON here")
    args = ap.parse_args(argv)

    wait_ready(args.url, timeout=120)
    order = np.random.default_rng(args.seed).integers(0, len(args.users), args.requests)

    def make_request(n: int):
        return "POST", "/recommend", {"user_id": args.users[order[n]], "k": args.k}

    samples = run_load(
        args.url,
        make_request,
        max_requests=args.requests,
        max_seconds=args.seconds,
        concurrency=args.concurrency,
    )
    bundles = collections.Counter(
        s.body.get("bundle_id") for s in samples if s.status == 200 and isinstance(s.body, dict)
    )
    result = {
        "url": args.url,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "concurrency": args.concurrency,
        "k": args.k,
        **summarise(samples),
        "statuses": dict(collections.Counter(s.status for s in samples)),
        "bundles": dict(bundles),
        "provenance": provenance(__file__, argv),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0 if result.get("failed", 1) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
