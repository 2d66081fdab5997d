"""Two-tower training throughput: examples/s at batch 1024, and one epoch on 1M interactions.

Data: a synthetic dataset from the project's generator (`pipelines.synth`, 1,000,000
interactions, 20,000 users, 5,000 items by default), written under .shortlist/bench/.
Measured: the wall time of one training epoch (in-batch softmax with logQ, batch 1024,
params' architecture) excluding feature preparation and validation, and examples/s over it;
torch threads from --threads (default 2). Results: benchmarks/results/train_throughput.json.

    .venv/bin/python benchmarks/train_throughput.py [--threads 2] [--interactions 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from shortlist.config import load_params
from shortlist.data import schema
from shortlist.data.io import read_dataset

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "train_throughput.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--interactions", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=5_000)
    ap.add_argument("--compile", action="store_true", help="torch.compile the training step")
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args()

    from pipelines import synth
    from shortlist.models.train import train_two_tower

    params = load_params(REPO / "params.yaml").with_overrides(
        {
            "towers.threads": a.threads,
            "towers.batch_size": a.batch_size,
            "towers.epochs": 1,
            "towers.compile": a.compile,
        }
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
    data = read_dataset(str(data_dir))
    inter = data.interactions
    # A small validation slice (each sampled user's last interaction) keeps the epoch's
    # evaluation negligible; it is timed separately and not part of the epoch time.
    last = inter.sort_values(schema.TIMESTAMP).groupby(schema.USER_ID).tail(1)
    validation = last.sample(n=min(500, len(last)), random_state=0)
    train = inter.drop(validation.index)

    t0 = time.perf_counter()
    _, report = train_two_tower(
        params, train, validation, data.items, data.users, seed=0, progress=True, mlflow_run=False
    )
    total = time.perf_counter() - t0
    epoch = report["history"][0]
    result = {
        "what": "two-tower training throughput (one epoch, in-batch softmax + logQ)",
        "command": "python benchmarks/train_throughput.py"
        + (f" --threads {a.threads}" if a.threads != 2 else "")
        + (" --compile" if a.compile else ""),
        "data": {
            "source": "pipelines.synth",
            "interactions": int(len(inter)),
            "train_examples": int(report["train_examples"]),
            "users": int(inter[schema.USER_ID].nunique()),
            "items": int(inter[schema.ITEM_ID].nunique()),
        },
        "threads": a.threads,
        "batch_size": a.batch_size,
        "compile": a.compile,
        "epoch_seconds": epoch["train_seconds"],
        "examples_per_second": report["train_examples"] / epoch["train_seconds"],
        "steps_per_second": report["train_examples"] / a.batch_size / epoch["train_seconds"],
        "prepare_seconds": report["timings"]["prepare_seconds"],
        "validation_seconds": epoch["eval_seconds"],
        "total_seconds": total,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, load average at end "
        f"{os.getloadavg()[0]:.1f}",
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(
        f"epoch on {report['train_examples']:,} examples: {epoch['train_seconds']:.1f}s, "
        f"{result['examples_per_second']:,.0f} examples/s ({result['steps_per_second']:.1f} steps/s) "
        f"at batch {a.batch_size}, {a.threads} threads; prepare {result['prepare_seconds']:.1f}s"
    )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
