"""Index scale benchmark: IVF-PQ + refine at 10M synthetic items against exact search.

The catalog is 10M L2-normalised d=64 vectors with the structure trained embeddings have
(the generator of benchmarks/ann.py, scaled up): a Zipf-sized mixture of clusters whose
centres live near a 16-dim subspace, anisotropic noise within each cluster. It is written
in chunks to a memmap under .shortlist/bench/ (reused on a rerun), never held whole in RAM.
Queries are catalog vectors with noise added, renormalised: near the items, not on them.

The index is what `plan_index` picks for this catalog under a memory budget the float
vectors do not fit (`--budget-mb`, default 2048 MiB < 2.4 GiB of float32): IVF-PQ with the
refine vectors in the most precise compact form that fits. Measured: build time, bytes per
item (the serialized index / items), recall@10 against exact search (tie-aware, as the
canary reads it, and strict set overlap) and single-query latency on one thread (as
/recommend searches). Exact ground truth is a blocked brute-force scan (`exact_search`).

Tuning is on a validation query set, never the measured one: for each pq_m (rebuilt only
when the previous one missed the target), every (nprobe, refine_factor) of the grid is run
on the validation queries; the cheapest one reaching recall@10 >= 0.95 within p99 <= 20 ms
is kept (else the best recall within 20 ms), then measured once on the test queries.

Writes benchmarks/results/index_scale.json (with the host's CPU probe and load averages
before and after: the host is shared).
Reproduce: .venv/bin/python benchmarks/index_scale.py  (--items N for a smaller run)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shortlist.config import load_params  # noqa: E402
from shortlist.index import ann  # noqa: E402

if __package__:  # imported as benchmarks.<name>
    from .provenance import provenance
else:  # run as a script: benchmarks/ is sys.path[0]
    from provenance import provenance

RESULTS = REPO / "benchmarks" / "results"
WORK = REPO / ".shortlist" / "bench" / "index_scale"  # gitignored: vectors and indexes
TARGET_RECALL = 0.95
TARGET_P99_MS = 20.0
CHUNK = 250_000


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def catalog(n: int, d: int, clusters: int, seed: int) -> tuple[np.ndarray, float]:
    """The clustered catalog as a read-only memmap, generated in chunks on first use."""
    path = WORK / f"vectors_{n}_{d}_{clusters}_{seed}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r"), 0.0
    WORK.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(16, d)).astype(np.float32)
    centres = rng.normal(size=(clusters, 16)).astype(np.float32) @ basis
    centres = normalise(centres + 0.3 * rng.normal(size=centres.shape).astype(np.float32))
    sizes = 1.0 / np.arange(1, clusters + 1) ** 0.8
    probs = sizes / sizes.sum()
    scales = (0.04 + 0.07 * rng.random(clusters)).astype(np.float32)
    shape = np.linspace(1.5, 0.3, d).astype(np.float32)
    tmp = path.with_suffix(".partial.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, d))
    for s in range(0, n, CHUNK):
        e = min(n, s + CHUNK)
        c = rng.choice(clusters, e - s, p=probs)
        noise = rng.standard_normal(size=(e - s, d), dtype=np.float32) * shape
        out[s:e] = normalise(centres[c] + scales[c, None] * noise)
    out.flush()
    del out
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r"), time.perf_counter() - t0


def queries_near(vectors: np.ndarray, m: int, seed: int, noise: float = 0.08) -> np.ndarray:
    """m catalog vectors (random rows) plus Gaussian noise of norm ~`noise`, renormalised."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(vectors), m, replace=False))
    d = vectors.shape[1]
    base = np.asarray(vectors[rows], dtype=np.float32)
    return normalise(base + noise / np.sqrt(d) * rng.normal(size=base.shape).astype(np.float32))


def single_queries(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query searched alone on one thread: (rows (m, k), latencies in ms (m,))."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    rows = np.empty((len(queries), k), np.int64)
    lat = np.empty(len(queries))
    try:
        for j, q in enumerate(queries):
            t = time.perf_counter()
            _, r = index.search(q[None, :], k)
            lat[j] = (time.perf_counter() - t) * 1e3
            rows[j] = r[0]
    finally:
        faiss.omp_set_num_threads(threads)
    return rows, lat


def quality(vectors, queries, rows, exact_s, exact_rows, k: int) -> dict[str, float]:
    found = ann.exact_scores_of(vectors, queries, rows)
    tie = {"ann_scores": found, "exact_scores": exact_s}
    return {
        f"recall@{k}": round(ann.recall_at_k(rows, exact_rows, k, **tie), 4),
        f"strict_recall@{k}": round(ann.recall_at_k(rows, exact_rows, k), 4),
    }


def latency(lat_ms: np.ndarray) -> dict[str, float]:
    return {
        "p50_ms": round(float(np.percentile(lat_ms, 50)), 3),
        "p99_ms": round(float(np.percentile(lat_ms, 99)), 3),
        "mean_ms": round(float(lat_ms.mean()), 3),
    }


def choose(grid: list[dict], k: int) -> dict:
    """Cheapest setting (lowest mean latency) reaching the recall target within the p99 target;
    else the best recall within the p99 target; else the best recall."""
    key = f"recall@{k}"
    ok = [g for g in grid if g[key] >= TARGET_RECALL and g["p99_ms"] <= TARGET_P99_MS]
    if ok:
        return min(ok, key=lambda g: g["mean_ms"])
    fast = [g for g in grid if g["p99_ms"] <= TARGET_P99_MS] or grid
    return max(fast, key=lambda g: (g[key], -g["p99_ms"]))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--items", type=int, default=10_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--clusters", type=int, default=20_000)
    ap.add_argument("--validation", type=int, default=300, help="tuning queries")
    ap.add_argument("--queries", type=int, default=1000, help="measured queries")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--budget-mb", type=int, default=2048, help="index.memory_budget_mb")
    ap.add_argument("--nlist", type=int, default=0, help="0: params.yaml's index.nlist")
    ap.add_argument("--pq-m", default="16,32", help="tried in order until one meets the target")
    ap.add_argument("--nprobe", default="8,16,32,64,128")
    ap.add_argument("--refine-factor", default="2,4,8,16")
    ap.add_argument("--threads", type=int, default=2, help="build threads (search: 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--out", default=str(RESULTS / "index_scale.json"))
    args = ap.parse_args()
    params = load_params(args.params)
    k = args.k
    base = params.index.model_copy(
        update={
            "type": "auto",
            "memory_budget_mb": args.budget_mb,
            "threads": args.threads,
            **({"nlist": args.nlist} if args.nlist else {}),
        }
    )
    result: dict = {
        "benchmark": "index_scale",
        "provenance": provenance(__file__),  # commit, CPU probe, load at start, versions
        "uptime_before": uptime(),
        "targets": {f"recall@{k}": TARGET_RECALL, "p99_ms": TARGET_P99_MS},
        "config": {
            "items": args.items,
            "dim": args.dim,
            "clusters": args.clusters,
            "validation_queries": args.validation,
            "test_queries": args.queries,
            "k": k,
            "memory_budget_mb": args.budget_mb,
            "build_threads": args.threads,
            "search_threads": 1,
            "seed": args.seed,
            "data": "Zipf mixture of clusters near a 16-dim subspace, anisotropic noise, "
            "L2-normalised; queries = catalog vectors + noise (norm ~0.08), renormalised",
        },
        "builds": [],
    }
    out = Path(args.out)

    def save() -> None:  # after every section: a long run leaves what it measured
        result["load_average_now"] = [round(x, 2) for x in os.getloadavg()]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")

    t0 = time.perf_counter()
    vectors, gen_s = catalog(args.items, args.dim, args.clusters, args.seed)
    n, d = vectors.shape
    float_bytes = n * d * 4
    print(f"catalog {n:,} x {d} ({float_bytes / 2**30:.2f} GiB float32), generated in {gen_s:.0f}s")
    val_q = queries_near(vectors, args.validation, args.seed + 1)
    test_q = queries_near(vectors, args.queries, args.seed + 2)
    t = time.perf_counter()
    exact_s, exact_rows = ann.exact_search(vectors, np.vstack([val_q, test_q]), k)
    exact_seconds = time.perf_counter() - t
    nv = len(val_q)
    truth_val = (exact_s[:nv], exact_rows[:nv])
    truth_test = (exact_s[nv:], exact_rows[nv:])
    result["generate_seconds"] = round(gen_s, 1)
    result["exact_ground_truth"] = {
        "queries": len(val_q) + len(test_q),
        "seconds": round(exact_seconds, 1),
        "method": f"blocked brute-force inner product, {CHUNK:,}-row blocks",
    }
    result["float_vectors_bytes"] = float_bytes
    print(f"exact top-{k} of {nv + len(test_q)} queries in {exact_seconds:.0f}s")
    save()

    grid_np = [int(x) for x in args.nprobe.split(",")]
    grid_rf = [int(x) for x in args.refine_factor.split(",")]
    best = None
    for pq_m in [int(x) for x in args.pq_m.split(",")]:
        p = base.model_copy(update={"pq_m": pq_m})
        stats: dict = {}
        index = ann.build_index(vectors, p, stats=stats)
        path = WORK / f"index_{n}_{d}_pq{pq_m}.faiss"
        import faiss

        faiss.write_index(index, str(path))
        size = path.stat().st_size
        path.unlink()
        build = {
            "pq_m": pq_m,
            "plan": stats["plan"],
            "build_params": stats["params"],
            "build_seconds": stats["build_seconds"],
            "rss_delta_mib": round(stats["rss_delta_bytes"] / 2**20, 1),
            "index_bytes": size,
            "bytes_per_item": round(size / n, 2),
            "validation_grid": [],
        }
        print(
            f"pq_m={pq_m}: {stats['plan']['reason']}; built in {stats['build_seconds']:.0f}s, "
            f"{size / 2**20:,.0f} MiB = {size / n:.1f} B/item"
        )
        for nprobe in grid_np:
            for rf in grid_rf:
                ann.set_search_params(index, {"nprobe": nprobe, "refine_factor": rf})
                rows, lat = single_queries(index, val_q, k)
                g = {
                    "nprobe": nprobe,
                    "refine_factor": rf,
                    **quality(vectors, val_q, rows, *truth_val, k),
                    **latency(lat),
                }
                build["validation_grid"].append(g)
                print(
                    f"  nprobe {nprobe:4d} refine {rf:3d}: recall@{k} {g[f'recall@{k}']:.4f} "
                    f"p50 {g['p50_ms']:.2f} ms p99 {g['p99_ms']:.2f} ms"
                )
        pick = choose(build["validation_grid"], k)
        build["chosen_on_validation"] = pick
        result["builds"].append(build)
        save()
        met = pick[f"recall@{k}"] >= TARGET_RECALL and pick["p99_ms"] <= TARGET_P99_MS
        if best is None or met or pick[f"recall@{k}"] > best[2][f"recall@{k}"]:
            best = (build, index, pick)  # the previous best index is freed here
        del index
        if met:
            break

    build, index, pick = best
    ann.set_search_params(index, {"nprobe": pick["nprobe"], "refine_factor": pick["refine_factor"]})
    rows, lat = single_queries(index, test_q, k)
    t = time.perf_counter()
    index.search(test_q, k)  # batched, all build threads
    batch_s = time.perf_counter() - t
    test = {
        "pq_m": build["pq_m"],
        "nprobe": pick["nprobe"],
        "refine_factor": pick["refine_factor"],
        "refine_type": build["plan"]["refine"],
        "nlist": build["build_params"]["nlist"],
        **quality(vectors, test_q, rows, *truth_test, k),
        **latency(lat),
        "batch_queries_per_second": round(len(test_q) / batch_s, 1),
        "bytes_per_item": build["bytes_per_item"],
        "float32_bytes_per_item": 4 * d,
        "build_seconds": build["build_seconds"],
    }
    test["met"] = test[f"recall@{k}"] >= TARGET_RECALL and test["p99_ms"] <= TARGET_P99_MS
    result["test"] = test
    result["uptime_after"] = uptime()
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    save()
    print(
        f"test ({len(test_q)} queries): recall@{k} {test[f'recall@{k}']:.4f} "
        f"(strict {test[f'strict_recall@{k}']:.4f}), p50 {test['p50_ms']:.2f} ms, "
        f"p99 {test['p99_ms']:.2f} ms, {test['bytes_per_item']:.1f} B/item, "
        f"build {test['build_seconds']:.0f}s; met: {test['met']}\nwrote {out}"
    )


if __name__ == "__main__":
    main()
