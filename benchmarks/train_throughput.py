"""Two-tower training throughput: examples/s at batch 1024, and the epoch time on 1M interactions.

Data: a synthetic dataset from the project's generator (`pipelines.synth`, 1,000,000
interactions, 20,000 users, 5,000 items by default), cached under .shortlist/bench/.
Measured: wall time of training steps exactly as `train_two_tower` runs them (in-batch
softmax with logQ, params' architecture, its optimizer and weight-average update, batch
1024, torch threads from --threads), after 5 warm-up steps, excluding feature preparation
and validation. By default one full epoch is timed; with --steps N only N steps are, and
the epoch time is extrapolated (labelled as such).
Results: benchmarks/results/train_throughput.json.

    .venv/bin/python benchmarks/train_throughput.py [--threads 2] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--interactions", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=5_000)
    ap.add_argument("--steps", type=int, default=0, help="time N steps only (0: a full epoch)")
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args()

    import torch
    from tqdm.auto import tqdm

    from pipelines import synth
    from shortlist.models.examples import build_examples, item_feature_tensors
    from shortlist.models.features import FeatureState
    from shortlist.models.fit import model_config
    from shortlist.models.logq import StreamingFrequencyEstimator
    from shortlist.models.objective import WeightAverage, make_optimizer, train_step
    from shortlist.models.two_tower import build_net

    params = load_params(REPO / "params.yaml").with_overrides(
        {
            "towers.threads": a.threads,
            "towers.batch_size": a.batch_size,
        }
    )
    tp = params.towers
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
    data = read_dataset(str(data_dir))
    train = data.interactions

    torch.set_num_threads(tp.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    state = FeatureState.fit(
        train, data.items, data.users, title_hash_buckets=tp.title_hash_buckets
    )
    net = build_net(state, model_config(tp), data.items)
    examples = build_examples(train, state, data.users, tp.history_len)
    item_feats = item_feature_tensors(state, data.items)
    estimator = StreamingFrequencyEstimator(tp.logq.hash_buckets, tp.logq.alpha)
    estimator.update(examples.item_idx[rng.permutation(len(examples))], 0)
    prepare = time.perf_counter() - t0
    optimizer = make_optimizer(net, tp)
    # The weight average training keeps (towers.ema_decay) is updated after every step.
    ema = WeightAverage(net, tp.ema_decay) if tp.ema_decay else None

    n, bs = len(examples), tp.batch_size
    steps_per_epoch = math.ceil(n / bs)
    timed = min(a.steps, steps_per_epoch) if a.steps else steps_per_epoch
    perm = rng.permutation(n)
    step = estimator.steps_seen
    net.train()
    for s in range(WARMUP_STEPS):  # first calls allocate
        rows = perm[s * bs : (s + 1) * bs]
        train_step(net, optimizer, examples, rows, item_feats, estimator, step, tp, rng)
        if ema is not None:
            ema.update(net)
        step += len(rows)
    t1 = time.perf_counter()
    done = 0
    for s in tqdm(range(timed), desc="timed steps"):
        rows = perm[(s * bs) % n : (s * bs) % n + bs]
        train_step(net, optimizer, examples, rows, item_feats, estimator, step, tp, rng)
        if ema is not None:
            ema.update(net)
        step += len(rows)
        done += len(rows)
    seconds = time.perf_counter() - t1
    eps = done / seconds
    result = {
        "what": "two-tower training throughput (in-batch softmax + logQ, train_two_tower's step, "
        "optimizer and weight-average update)",
        "ema_decay": tp.ema_decay,
        "command": "python benchmarks/train_throughput.py"
        + (f" --threads {a.threads}" if a.threads != 2 else "")
        + (f" --steps {a.steps}" if a.steps else ""),
        "data": {
            "source": "pipelines.synth (seed 0)",
            "interactions": int(len(train)),
            "users": int(train[schema.USER_ID].nunique()),
            "items": int(train[schema.ITEM_ID].nunique()),
        },
        "threads": a.threads,
        "batch_size": bs,
        "timed_steps": timed,
        "steps_per_epoch": steps_per_epoch,
        "examples_per_second": eps,
        "steps_per_second": timed / seconds,
        "epoch_seconds": n / eps,
        "epoch_seconds_is_extrapolated": timed < steps_per_epoch,
        "prepare_seconds": prepare,
        # after the timed steps: the load average is the run's (other work on the machine
        # slows every number here)
        "provenance": provenance(__file__),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    kind = "extrapolated from" if timed < steps_per_epoch else "measured over"
    print(
        f"{eps:,.0f} examples/s ({timed / seconds:.1f} steps/s) at batch {bs}, {a.threads} threads; "
        f"epoch on {n:,} interactions: {n / eps:.0f}s ({kind} {timed} steps); "
        f"feature preparation {prepare:.1f}s; load average {os.getloadavg()[0]:.1f}"
    )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
