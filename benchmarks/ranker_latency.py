"""Ranker latency: p50/p99 to score 200 candidates for one request on 1 thread.

Features included: each timed call is `Ranker.score(user, history, candidates, context)`
as serving calls it (user features from the history, crosses, popularity snapshot lookup,
context, standardisation, the DCN forward). The retrieval scores come with the request
(serving has them from the index); the separate `with_tower_scores` row times the path that
recomputes them with the towers. Uses the ranker in MODEL_DIR when given, else trains a
small one on ml-100k (towers for 2 epochs: latency does not depend on quality).

    .venv/bin/python benchmarks/ranker_latency.py [--model MODEL_DIR] [--requests 2000] [--rounds 5]

Reports the round with the median p99 (all rounds are in the JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__:  # imported as benchmarks.<name>
    from .provenance import provenance
else:  # run as a script: benchmarks/ is sys.path[0]
    from provenance import provenance

REPO = Path(__file__).resolve().parents[1]


def build(model_dir: str, data: str) -> None:
    from shortlist.config import load_params
    from shortlist.data.movielens import load_ml100k
    from shortlist.eval.harness import holdout_last
    from shortlist.models.fit import train_two_tower
    from shortlist.ranking.train import train_ranker

    p = load_params(
        REPO / "params.yaml", {"towers.epochs": 2, "ranker.epochs": 2, "ranker.threads": 1}
    )
    inter, items, users = load_ml100k(data)
    train, _ = holdout_last(inter, 0.2, min_interactions=5)
    fit, val = holdout_last(train, 0.1, min_interactions=5)
    towers, _ = train_two_tower(p, fit, val, items, users, seed=0, progress=False, mlflow_run=False)
    towers.save(model_dir)
    ranker, _ = train_ranker(p, towers, fit, val, items, users, progress=False, mlflow_run=False)
    ranker.save(model_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="MODEL_DIR with towers and ranker (default: train one)")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "ml-100k"))
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5, help="timed passes over the requests")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ranker_latency.json"))
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from shortlist.ranking.ranker import Ranker

    tmp = None
    model_dir = a.model
    if model_dir is None:
        tmp = tempfile.TemporaryDirectory()
        model_dir = tmp.name
        build(model_dir, a.data)
    ranker = Ranker.load(model_dir)
    rng = np.random.default_rng(0)
    items = ranker.space.item_ids
    users = ranker.space.user_ids
    n = min(a.candidates, len(items))

    def request():
        hist_len = int(rng.integers(20, 200))
        hist = list(rng.choice(items, size=hist_len, replace=False))
        cands = list(rng.choice(items, size=n, replace=False))
        scores = np.sort(rng.uniform(0.2, 0.9, n).astype(np.float32))[::-1]
        return (
            str(rng.choice(users)),
            hist,
            cands,
            {"timestamp": 893_000_000, "retrieval_scores": scores},
        )

    reqs = [request() for _ in range(a.requests)]
    for r in reqs[:50]:  # warm-up
        ranker.score(*r)
    # Several rounds over the same requests: this host's speed drifts within minutes, so one
    # round's p99 swings by 2x; the headline is the median round, every round is recorded.
    rounds = []
    for _ in range(a.rounds):
        times, cpu = [], []
        for r in reqs:
            c0, t0 = time.thread_time(), time.perf_counter()
            ranker.score(*r)
            times.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
        ms, cpu_ms = np.asarray(times) * 1e3, np.asarray(cpu) * 1e3
        rounds.append(
            {
                "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99)),
                "mean_ms": float(ms.mean()),
                "cpu_p50_ms": float(np.percentile(cpu_ms, 50)),
                "cpu_p99_ms": float(np.percentile(cpu_ms, 99)),
            }
        )
    median = sorted(rounds, key=lambda x: x["p99_ms"])[len(rounds) // 2]
    towers_ms = []
    for u, h, c, ctx in reqs[:200]:
        ctx2 = {"timestamp": ctx["timestamp"]}
        t0 = time.perf_counter()
        ranker.score(u, h, c, ctx2)
        towers_ms.append((time.perf_counter() - t0) * 1e3)
    towers_ms = np.asarray(towers_ms[20:])
    result = {
        "benchmark": "ranker_latency",
        "data": "ml-100k catalog; random users, histories (20-200 items) and 200 candidates",
        "command": "python benchmarks/ranker_latency.py " + " ".join(argv or sys.argv[1:]),
        "threads": torch.get_num_threads(),
        "candidates": n,
        "requests": len(reqs),
        "features_included": True,
        # The round with the median p99 (CPU time of the scoring thread beside the wall
        # time: the cost without other processes' contention); all rounds below.
        **median,
        "rounds": rounds,
        "p99_ms_range": [min(x["p99_ms"] for x in rounds), max(x["p99_ms"] for x in rounds)],
        "with_tower_scores": {
            "p50_ms": float(np.percentile(towers_ms, 50)),
            "p99_ms": float(np.percentile(towers_ms, 99)),
        },
        "target_p99_ms": 5.0,
        "target_met": bool(median["p99_ms"] <= 5.0),
        # Taken after the rounds: the CPU probe (seconds for a fixed pure-Python loop;
        # compare latencies only between runs whose probes are close) and the load.
        "provenance": provenance(__file__, argv),
    }
    prov = result["provenance"]
    print(
        f"ranker.score, {n} candidates, 1 thread, features included: "
        f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms (median of "
        f"{len(rounds)} rounds; p99 range {result['p99_ms_range'][0]:.2f}-"
        f"{result['p99_ms_range'][1]:.2f} ms) "
        f"(with tower scores recomputed: p50 {result['with_tower_scores']['p50_ms']:.2f} ms, "
        f"p99 {result['with_tower_scores']['p99_ms']:.2f} ms) over {len(reqs)} requests a round; "
        f"thread CPU p50 {result['cpu_p50_ms']:.2f} ms, p99 {result['cpu_p99_ms']:.2f} ms; "
        f"load average {prov['load_average'][0]:.1f} on {prov['cpu_count']} cores; "
        f"CPU probe {prov['cpu_probe_seconds']} s"
    )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
