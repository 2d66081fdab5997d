"""ANN benchmark: recall@10/@100 against exact search vs queries/s, per index type.

Datasets:
  ml-100k   item and user vectors from a truncated SVD (d=64) of the MovieLens 100K
            user x item matrix (a stand-in for trained item-tower embeddings: same
            catalog, real co-occurrence structure), or the real item tower with --model.
  synth-1M  1M L2-normalised d=64 vectors with realistic structure: a Zipf-sized mixture
            of 2,000 clusters whose centres live near a 16-dim subspace, anisotropic
            within-cluster noise; queries drawn from the same mixture (not uniform noise,
            the worst case that real embeddings never look like).
Index types: exact (flat IP), HNSW, IVF-Flat, IVF-PQ + exact refine, with the build
parameters of params.yaml and a sweep of the query-time knob (efSearch / nprobe).
Queries/s is measured batched (all queries in one call, all threads) and as single-query
latency (one query per call, as /recommend does). Also measured: the full re-embed of 1M
items through the real item tower (seeded, untrained: speed does not depend on the
weights) plus the index build, against the 5-minute target.

Writes benchmarks/results/ann.json, and a recall-vs-queries/s plot to
benchmarks/results/ann_recall_qps.png (a local file: .gitignore keeps plots out).
Reproduce: .venv/bin/python benchmarks/ann.py  (--items N for a smaller synthetic run)
"""

from __future__ import annotations

import argparse
import json
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
SWEEPS = {
    "flat": ("-", [None]),
    "hnsw": ("ef_search", [16, 32, 64, 128, 256]),
    "ivf_flat": ("nprobe", [1, 4, 16, 32, 64]),
    "ivf_pq": ("nprobe", [4, 16, 32, 64]),
}


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def ml100k_vectors(path: Path, model: str | None, d: int = 64):
    import pandas as pd
    from scipy.sparse import csr_matrix
    from scipy.sparse.linalg import svds

    df = pd.read_csv(path / "u.data", sep="\t", names=["u", "i", "r", "t"])
    users, items = df["u"].astype("category"), df["i"].astype("category")
    if model:
        from shortlist.data.movielens import load_ml100k
        from shortlist.models.two_tower import TwoTowerRetriever

        r = TwoTowerRetriever.load(model)
        inter, it, us = load_ml100k(path)
        ids = sorted(inter["user_id"].unique())
        q = r.embed_users(ids, r.histories_from(inter, ids), users=us)
        return r.embed_items(it), q, f"item tower of {model}"
    m = csr_matrix(
        (np.ones(len(df), dtype=np.float32), (users.cat.codes, items.cat.codes)),
        shape=(users.cat.categories.size, items.cat.categories.size),
    )
    u, s, vt = svds(m, k=d, random_state=0)
    item_vecs = normalise(vt.T * np.sqrt(s))
    user_vecs = normalise(u * np.sqrt(s))
    return item_vecs, user_vecs, "truncated SVD (d=64) of the ml-100k interaction matrix"


def synthetic(n: int, nq: int, d: int = 64, clusters: int = 2000, seed: int = 0):
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(16, d)).astype(np.float32)
    centres = rng.normal(size=(clusters, 16)).astype(np.float32) @ basis
    centres += 0.3 * rng.normal(size=centres.shape).astype(np.float32)
    centres = normalise(centres)
    sizes = 1.0 / np.arange(1, clusters + 1) ** 0.8
    probs = sizes / sizes.sum()
    # within-cluster noise norm ~0.3-0.9 of the centre norm: tight and loose clusters
    scales = (0.04 + 0.07 * rng.random(clusters)).astype(np.float32)

    def draw(m: int, r: np.random.Generator) -> np.ndarray:
        out = np.empty((m, d), dtype=np.float32)
        for s in range(0, m, 200_000):
            e = min(m, s + 200_000)
            c = r.choice(clusters, e - s, p=probs)
            aniso = r.normal(size=(e - s, d)).astype(np.float32) * np.linspace(1.5, 0.3, d)
            out[s:e] = normalise(centres[c] + scales[c, None] * aniso)
        return out

    return draw(n, rng), draw(nq, np.random.default_rng(seed + 1))


def timed_queries(index, queries: np.ndarray, k: int, single: int):
    t0 = time.perf_counter()
    _, rows = ann.search(index, queries, k)
    batch_s = time.perf_counter() - t0
    import faiss

    lat = []
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one query per call: OpenMP only adds overhead
    for q in queries[:single]:
        t = time.perf_counter()
        ann.search(index, q[None, :], k)
        lat.append(time.perf_counter() - t)
    faiss.omp_set_num_threads(threads)
    lat_ms = np.array(lat) * 1e3
    return rows, {
        "batch_qps": round(len(queries) / batch_s, 1),
        "single_ms_p50": round(float(np.percentile(lat_ms, 50)), 3),
        "single_ms_p99": round(float(np.percentile(lat_ms, 99)), 3),
        "single_qps": round(1e3 / float(lat_ms.mean()), 1),
    }


def bench_dataset(name, items, queries, params, kinds, single):
    print(f"\n== {name}: {len(items):,} items x {items.shape[1]}, {len(queries)} queries")
    exact_scores, exact = ann.exact_search(items, queries, 100)
    out = {"items": len(items), "dim": int(items.shape[1]), "queries": len(queries), "runs": []}
    for kind in kinds:
        stats: dict = {}
        p = params.index.model_copy(update={"type": kind})
        index = ann.build_index(items, p, stats=stats)
        knob, values = SWEEPS[kind]
        print(
            f"{kind}: built in {stats['build_seconds']:.1f}s ({stats['seconds_per_million']:.1f} s/M), "
            f"+{stats['rss_delta_bytes'] / 2**20:.0f} MiB, {stats['params']}"
        )
        for v in values:
            if v is not None:
                ann.set_search_params(index, {knob: v})
            rows, speed = timed_queries(index, queries, 100, single)
            # Tie-aware (what the canary SLO reads) and strict set overlap beside it.
            found = ann.exact_scores_of(items, queries, rows)
            ties = {"ann_scores": found, "exact_scores": exact_scores}
            run = {
                "index": kind,
                "knob": knob,
                "value": v,
                "build_seconds": stats["build_seconds"],
                "build_seconds_per_million": stats["seconds_per_million"],
                "build_params": stats["params"],
                "rss_delta_mib": round(stats["rss_delta_bytes"] / 2**20, 1),
                "recall@10": round(ann.recall_at_k(rows, exact, 10, **ties), 4),
                "recall@100": round(ann.recall_at_k(rows, exact, 100, **ties), 4),
                "strict_recall@10": round(ann.recall_at_k(rows, exact, 10), 4),
                "strict_recall@100": round(ann.recall_at_k(rows, exact, 100), 4),
                **speed,
            }
            out["runs"].append(run)
            print(
                f"  {knob}={v}: recall@10 {run['recall@10']:.4f} @100 {run['recall@100']:.4f} "
                f"batch {run['batch_qps']:.0f} q/s, single p50 {run['single_ms_p50']:.2f} ms "
                f"p99 {run['single_ms_p99']:.2f} ms"
            )
        del index
    return out


def synthetic_catalog(n: int, seed: int = 0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(5000)])
    genres = np.array([f"g{i}" for i in range(19)])
    titles = [" ".join(words[rng.integers(0, 5000, 3)]) for _ in range(n)]
    return pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(n)],
            "title": titles,
            "genres": [
                list(genres[rng.choice(19, rng.integers(1, 4), replace=False)]) for _ in range(n)
            ],
            "year": rng.integers(1950, 2025, n).astype(float),
        }
    )


def reembed_and_build(n: int, params, workdir: Path):
    """Full re-embed of n items through the real item tower, then the index build."""
    import pandas as pd
    import torch

    from shortlist.index.embed import embed_catalog
    from shortlist.models.features import FeatureState
    from shortlist.models.fit import model_config
    from shortlist.models.two_tower import TwoTowerRetriever, build_net

    torch.set_num_threads(params.towers.threads)
    torch.manual_seed(0)
    items = synthetic_catalog(n)
    train = pd.DataFrame(
        {
            "user_id": ["u0"] * n,
            "item_id": items["item_id"],
            "timestamp": np.arange(n),
            "weight": 1.0,
        }
    )
    state = FeatureState.fit(
        train, items, None, title_hash_buckets=params.towers.title_hash_buckets
    )
    config = model_config(params.towers)
    retriever = TwoTowerRetriever(build_net(state, config, items), state, config, items)
    kind = ann.resolve_type(n, params.index)
    print(f"\n== re-embed {n:,} items (item tower d={config['embedding_dim']}) + {kind} index")
    t0 = time.perf_counter()
    embed_stats: dict = {}
    vectors = embed_catalog(
        retriever,
        items,
        workdir / "emb.npy",
        batch_size=params.index.embed_batch_size,
        stats=embed_stats,
    )
    t_enc = time.perf_counter()
    retriever.state.encode_items(items.iloc[:20_000])
    encode_share = (time.perf_counter() - t_enc) / 20_000 * embed_stats["items_per_second"]
    index_stats: dict = {}
    ann.build_index(vectors, params.index, stats=index_stats)
    total = embed_stats["seconds"] + index_stats["build_seconds"]
    print(
        f"embed {embed_stats['seconds']:.1f}s ({embed_stats['items_per_second']:.0f} items/s, "
        f"feature encoding ~{100 * encode_share:.0f}% of it) + {kind} build "
        f"{index_stats['build_seconds']:.1f}s = {total:.1f}s"
    )
    return {
        "items": n,
        "index_type": kind,
        "embed": embed_stats,
        "feature_encoding_share": round(encode_share, 3),
        "index": index_stats,
        "total_seconds": round(total, 1),
        "target_seconds": 300,
        "within_target": total <= 300,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("ml-100k", "synth") if n in results["datasets"]]
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        ds = results["datasets"][name]
        for kind, color in zip(SWEEPS, ("C0", "C1", "C2", "C3"), strict=True):
            runs = [r for r in ds["runs"] if r["index"] == kind]
            if runs:
                ax.plot(
                    [r["batch_qps"] for r in runs],
                    [r["recall@10"] for r in runs],
                    "o-",
                    label=kind,
                    color=color,
                )
        ax.axhline(0.95, color="grey", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("queries/s (batched, 2 threads)")
        ax.set_ylabel("recall@10 vs exact")
        ax.set_title(f"{name}: {ds['items']:,} items")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--items", type=int, default=1_000_000, help="synthetic catalog size")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--single", type=int, default=200, help="single-query latency samples")
    ap.add_argument("--ml100k", default=str(REPO.parent / "shared" / "datasets" / "ml-100k"))
    ap.add_argument("--model", help="trained towers dir: use its item tower for ml-100k")
    ap.add_argument("--kinds", default="flat,hnsw,ivf_flat,ivf_pq")
    ap.add_argument("--reembed-items", type=int, default=1_000_000, help="0 skips it")
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    args = ap.parse_args()
    params = load_params(args.params)
    kinds = args.kinds.split(",")

    results = {
        "benchmark": "ann",
        "command": "python benchmarks/ann.py " + " ".join(sys.argv[1:]),
        "provenance": provenance(__file__),  # commit, CPU, load at start, versions
        "machine": {
            "threads": params.index.threads,
        },
        "index_params": params.index.model_dump(),
        "datasets": {},
    }

    def save() -> None:  # after every section, so a long run leaves what it measured
        results["machine"]["load_avg_now"] = list(__import__("os").getloadavg())
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "ann.json").write_text(json.dumps(results, indent=2, default=str))
        plot(results, RESULTS / "ann_recall_qps.png")
        print(f"wrote {RESULTS / 'ann.json'} and {RESULTS / 'ann_recall_qps.png'}")

    ml = Path(args.ml100k)
    if (ml / "u.data").exists():
        items, users, source = ml100k_vectors(ml, args.model)
        results["datasets"]["ml-100k"] = {
            "source": source,
            **bench_dataset("ml-100k", items, users, params, kinds, args.single),
        }
        save()
    items, queries = synthetic(args.items, args.queries)
    fast = [k for k in kinds if k != "hnsw"]  # HNSW builds slowest: measured last
    synth = {"source": "clustered mixture, see docstring"}
    synth.update(bench_dataset("synth", items, queries, params, fast, args.single))
    results["datasets"]["synth"] = synth
    save()
    if args.reembed_items:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            results["reembed_and_build"] = reembed_and_build(args.reembed_items, params, Path(tmp))
        save()
    if "hnsw" in kinds:
        extra = bench_dataset("synth", items, queries, params, ["hnsw"], args.single)
        synth["runs"] += extra["runs"]
        save()


if __name__ == "__main__":
    main()
