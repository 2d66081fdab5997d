"""Two-tower training throughput: examples/s at batch 1024 on a 1M-item catalog, before and
after the sparse tables and the batch prefetcher, with a profile of where a step's time goes.

Data: a synthetic dataset from the project's generator (`pipelines.synth`, seed 0; by default
2,000,000 interactions, 200,000 users, 1,000,000 items), cached under .shortlist/bench/.
Measured: training steps exactly as `fit_towers` runs them (batches from `prepare_batch`
through `prefetch`, `apply_step` with the params' optimizer and weight average, in-batch
softmax with logQ, batch 1024), excluding feature preparation and validation, in variants:

    before: dense tables (fused AdamW over every row, dense weight average), inline batches
            (towers.sparse_embeddings=off, towers.prefetch_batches=0)
    after:  sparse tables (RowAdam on the touched rows, the history pooled over its
            distinct items, lazily caught-up average, all in transparent huge pages),
            batches assembled ahead by a background thread (the params' values at 1M items)

Each variant builds its network afresh from the same seed, takes 5 warm-up steps, then
--steps timed steps; the variants alternate (before, after, before, after, ... --rounds
times) because the shared host's speed drifts. Then each is profiled (torch.profiler) over
--profile-steps steps: milliseconds per step in each labelled region (batch assembly, logQ,
forward, backward, optimizer step, weight average, waiting for a prefetched batch) and the
rest of the step (the loop's own Python work). A roofline estimate sets the towers'
arithmetic per example against this CPU's measured matmul FLOP/s.
Results: benchmarks/results/train_throughput.json.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/train_throughput.py [--threads 2] [--steps 200]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from shortlist.config import load_params
from shortlist.data import schema
from shortlist.data.io import read_dataset

if __package__:  # imported as benchmarks.<name>
    from .provenance import provenance
else:  # run as a script: benchmarks/ is sys.path[0]
    from provenance import provenance

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "train_throughput.json"
WARMUP_STEPS = 5
VARIANTS = {
    "before": {"towers.sparse_embeddings": "off", "towers.prefetch_batches": 0},
    "after": {"towers.sparse_embeddings": "on", "towers.prefetch_batches": 2},
}
#: The profiled regions (torch.profiler.record_function labels in objective.py).
REGIONS = (
    "batch assembly",
    "logQ",
    "batch wait",
    "forward",
    "backward",
    "optimizer step",
    "EMA of weights",
)


def towers_flops_per_example(net: Any, tp: Any) -> dict[str, float]:
    """Multiply-adds x 2 of one training example's share of a step, forward and backward
    (backward ~ 2x forward): the query tower and history pooling per example, the item
    tower per candidate (batch positives + shared negatives, divided over the batch), the
    logits (batch x candidates x d). Embedding gathers, softmax and elementwise work are
    left out: they are memory-bound, not arithmetic."""

    def mlp(seq: Any) -> float:
        return float(
            sum(2 * m.in_features * m.out_features for m in seq if hasattr(m, "in_features"))
        )

    b, neg, d = tp.batch_size, tp.mixed_negatives, tp.embedding_dim
    cands = b + neg
    e = net.item_id.weight.shape[1]
    query = mlp(net.query_mlp) + 2 * tp.history_len * (e + net.genre_table.shape[1])
    item = mlp(net.item_mlp) * cands / b
    logits = 2.0 * cands * d
    forward = query + item + logits
    return {
        "query_tower_forward": query,
        "item_tower_forward_per_example": item,
        "logits_forward": logits,
        "forward": forward,
        "train_step": 3 * forward,
    }


def matmul_flops(threads: int, seconds: float = 3.0) -> dict[str, float]:
    """This CPU's float32 matmul FLOP/s on the towers' shapes (the item tower's first layer
    over one batch's candidates, the logits) and on a large square product, best of repeats."""
    import torch

    torch.set_num_threads(threads)
    shapes = {"tower layer 1536x192x128": (1536, 192, 128), "logits 1024x64x1536": (1024, 64, 1536)}
    shapes["square 1024"] = (1024, 1024, 1024)
    out = {}
    for name, (m, k, n) in shapes.items():
        a, w = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            a @ w
        best, t_end = float("inf"), time.perf_counter() + seconds / len(shapes)
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            for _ in range(10):
                a @ w
            best = min(best, (time.perf_counter() - t0) / 10)
        out[name] = 2.0 * m * k * n / best
    return out


class Setup:
    """The data and what every variant shares: examples, content, the warmed estimator."""

    def __init__(self, params: Any, data_dir: Path) -> None:
        from shortlist.models.examples import build_examples, item_feature_tensors
        from shortlist.models.features import FeatureState
        from shortlist.models.logq import StreamingFrequencyEstimator

        tp = params.towers
        data = read_dataset(str(data_dir))
        self.train, self.items = data.interactions, data.items
        t0 = time.perf_counter()
        self.state = FeatureState.fit(
            self.train,
            data.items,
            data.users,
            title_hash_buckets=tp.title_hash_buckets,
            user_buckets=tp.user_buckets,
        )
        self.examples = build_examples(self.train, self.state, data.users, tp.history_len)
        self.item_feats = item_feature_tensors(self.state, data.items)
        rng = np.random.default_rng(0)
        self.estimator = StreamingFrequencyEstimator(tp.logq.hash_buckets, tp.logq.alpha)
        self.estimator.update(self.examples.item_idx[rng.permutation(len(self.examples))], 0)
        self.perm = rng.permutation(len(self.examples))
        self.prepare_seconds = time.perf_counter() - t0


def run_variant(setup: Setup, tp: Any, steps: int, profile: bool = False) -> dict[str, Any]:
    """Build the towers afresh (seed 0) as `fit_towers` does, take WARMUP_STEPS steps, then
    time `steps` steps (under torch.profiler with `profile`)."""
    import torch

    from shortlist.models.fit import model_config
    from shortlist.models.objective import (
        WeightAverage,
        apply_step,
        make_optimizer,
        prefetch,
        prepare_batch,
        resolve_sparse,
        set_sparse,
    )
    from shortlist.models.two_tower import build_net

    torch.manual_seed(0)
    net = build_net(setup.state, model_config(tp), setup.items)
    sparse = resolve_sparse(tp, setup.state.n_item_ids - 1)
    set_sparse(net, sparse)
    optimizer = make_optimizer(net, tp)
    ema = WeightAverage(net, tp.ema_decay) if tp.ema_decay else None
    estimator = copy.deepcopy(setup.estimator)
    rng = np.random.default_rng(1)
    n, bs = len(setup.examples), tp.batch_size
    total = WARMUP_STEPS + steps
    schedule = []
    at = estimator.steps_seen
    for s in range(total):
        start = (s * bs) % (n - bs)
        schedule.append((setup.perm[start : start + bs], at))
        at += bs

    def assemble(item: tuple[np.ndarray, int]) -> Any:
        rows, pos = item
        return prepare_batch(
            setup.examples, rows, setup.item_feats, estimator, pos, tp, rng, table_rows=sparse
        )

    net.train()
    batches = prefetch(schedule, assemble, tp.prefetch_batches)
    for _ in range(WARMUP_STEPS):
        apply_step(net, optimizer, next(batches), setup.item_feats, tp, ema=ema)
    prof = None
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        prof = torch_profile(activities=[ProfilerActivity.CPU])
        prof.__enter__()
    t0 = time.perf_counter()
    for _ in range(steps):
        apply_step(net, optimizer, next(batches), setup.item_feats, tp, ema=ema)
    seconds = time.perf_counter() - t0
    batches.close()
    out: dict[str, Any] = {
        "sparse_tables": sparse,
        "prefetch_batches": tp.prefetch_batches,
        "steps": steps,
        "seconds": seconds,
        "examples_per_second": steps * bs / seconds,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    if prof is not None:
        prof.__exit__(None, None, None)
        out["profile"] = profile_table(prof, steps, seconds)
    del net, optimizer, ema, batches
    gc.collect()
    return out


def profile_table(prof: Any, steps: int, seconds: float) -> dict[str, Any]:
    """ms per step in each labelled region (its CPU time, children included) and the rest
    of the step's wall time; the ops with the most self CPU time."""
    events = prof.key_averages()
    regions = {r: 0.0 for r in REGIONS}
    for ev in events:
        if ev.key in regions:
            regions[ev.key] += ev.cpu_time_total / 1000.0 / steps
    step_ms = seconds * 1000.0 / steps
    # Assembly and logQ run on the prefetch thread when prefetching: off the step's path.
    on_path = sum(v for k, v in regions.items() if k not in ("batch assembly", "logQ"))
    ops = sorted(
        (ev for ev in events if ev.key.startswith("aten::") or "Optimizer" in ev.key),
        key=lambda ev: -ev.self_cpu_time_total,
    )[:10]
    return {
        "step_ms": step_ms,
        "regions_ms_per_step": {k: round(v, 3) for k, v in regions.items()},
        "on_step_path_ms": round(on_path, 3),
        "top_ops_self_ms_per_step": {
            ev.key: round(ev.self_cpu_time_total / 1000.0 / steps, 3) for ev in ops
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--interactions", type=int, default=2_000_000)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=200, help="timed steps per variant and round")
    ap.add_argument("--rounds", type=int, default=2, help="before/after pairs, interleaved")
    ap.add_argument("--profile-steps", type=int, default=30, help="0: no profile")
    ap.add_argument("--variants", default="before,after")
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args()

    import torch

    from pipelines import synth

    params = load_params(REPO / "params.yaml").with_overrides(
        {"towers.threads": a.threads, "towers.batch_size": a.batch_size}
    )
    data_dir = REPO / ".shortlist" / "bench" / f"synth-{a.interactions}-{a.users}-{a.items}"
    if not (data_dir / schema.SNAPSHOT).exists():
        synth.run(
            params,
            users=a.users,
            items=a.items,
            interactions=a.interactions,
            seed=0,
            out_dir=str(data_dir),
        )
    torch.set_num_threads(a.threads)
    setup = Setup(params, data_dir)
    names = a.variants.split(",")
    tps = {v: params.with_overrides(VARIANTS[v]).towers for v in names}
    n_items = setup.state.n_item_ids - 1
    print(
        f"{len(setup.examples):,} examples, {n_items:,} catalog items, "
        f"{setup.state.n_user_ids:,} user rows; preparation {setup.prepare_seconds:.0f}s"
    )

    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in names}
    for r in range(a.rounds):
        for v in names:
            got = run_variant(setup, tps[v], a.steps)
            runs[v].append(got)
            print(
                f"round {r + 1} {v}: {got['examples_per_second']:,.0f} examples/s "
                f"(load {got['load_average_1m']})"
            )
    profiles = {}
    if a.profile_steps:
        for v in names:
            profiles[v] = run_variant(setup, tps[v], a.profile_steps, profile=True)["profile"]
            print(
                v,
                json.dumps(profiles[v]["regions_ms_per_step"]),
                f"step {profiles[v]['step_ms']:.1f} ms",
            )

    from shortlist.models.fit import model_config
    from shortlist.models.two_tower import build_net

    tp = params.towers
    flops = towers_flops_per_example(build_net(setup.state, model_config(tp), setup.items), tp)
    mm = matmul_flops(a.threads)
    peak = max(mm.values())
    roofline_eps = peak / flops["train_step"]
    eps = {v: float(np.median([x["examples_per_second"] for x in runs[v]])) for v in names}
    best = eps[names[-1]]
    result = {
        "what": "two-tower training throughput at a 1M-item catalog (fit_towers' step: "
        "in-batch softmax + logQ, the optimizer, the weight average), before/after sparse "
        "tables and batch prefetching, interleaved",
        "data": {
            "source": "pipelines.synth (seed 0)",
            "interactions": int(len(setup.train)),
            "users": int(setup.train[schema.USER_ID].nunique()),
            "catalog_items_in_vocabulary": int(n_items),
            "items_generated": a.items,
        },
        "threads": a.threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "batch_size": a.batch_size,
        "mixed_negatives": tp.mixed_negatives,
        "embedding_dim": tp.embedding_dim,
        "variants": {v: VARIANTS[v] for v in names},
        "rounds": runs,
        "examples_per_second_median": eps,
        "speedup": best / eps[names[0]] if len(names) > 1 else None,
        "profile": profiles,
        "roofline": {
            "flops_per_example": flops,
            "matmul_flops_per_second": mm,
            "peak_used": peak,
            "examples_per_second_bound": roofline_eps,
            "measured_over_bound": best / roofline_eps,
        },
        "prepare_seconds": setup.prepare_seconds,
        # after the runs: the load average is the run's (other work slows every number here)
        "provenance": provenance(__file__),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(
        " | ".join(f"{v} {eps[v]:,.0f} examples/s" for v in names)
        + f"; roofline {roofline_eps:,.0f} examples/s ({flops['train_step'] / 1e6:.2f} MFLOP "
        f"per example at {peak / 1e9:.1f} GFLOP/s): measured/bound {best / roofline_eps:.2f}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
