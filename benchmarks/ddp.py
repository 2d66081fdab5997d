"""Data-parallel towers training on ml-100k: 1 vs N processes, wall time and validation.

Protocol: `shortlist ingest --source movielens-100k` and `shortlist split` with their
defaults, then `shortlist train-towers` once per process count with params.yaml's settings,
`--set towers.threads=1` (each process one thread) and `--set towers.processes=N`, plus
any `--set` given here. Recorded per run: the command's wall time (interpreter start,
torchrun's launch, training with early stopping and the refit, the writes), the stage's
own training seconds and examples/s of the early-stopping epochs, and validation
Recall@20 / NDCG@20 of the early-stopping model (before the refit). The load average is
taken before each run: on a shared host it moves every time here.
MLflow logs into a temporary directory. Results: benchmarks/results/ddp.json (or --out).

    .venv/bin/python benchmarks/ddp.py [--processes 1 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__:  # imported as benchmarks.<name>
    from .provenance import provenance
else:  # run as a script: benchmarks/ is sys.path[0]
    from provenance import provenance

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "ddp.json"


def _shortlist(*args: str) -> str:
    """Run the CLI (same interpreter) and return its stdout; its stderr passes through."""
    cmd = [sys.executable, "-m", "shortlist", *args]
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "ml-100k"))
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args(argv)
    prov = provenance(__file__, argv)

    runs = []
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as tmp:
        work = Path(tmp)
        common = [
            f"--set=mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}",
            f"--set=tuning.path={work / 'no-tuning.json'}",
        ]
        _shortlist(
            "ingest",
            "--source",
            "movielens-100k",
            "--path",
            a.data,
            "--out",
            str(work / "data"),
            *common,
        )
        _shortlist("split", str(work / "data"), "--out", str(work / "split"), *common)
        for n in a.processes:
            sets = [*common, "--set=towers.threads=1", f"--set=towers.processes={n}"]
            sets += [f"--set={o}" for o in a.overrides]
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            out = _shortlist(
                "train-towers", str(work / "split"), "--out", str(work / f"model-{n}"), *sets
            )
            wall = time.perf_counter() - t0
            result = json.loads(out)
            report = json.loads((work / f"model-{n}" / "history.json").read_text())
            runs.append(
                {
                    "processes": n,
                    "wall_seconds": round(wall, 1),
                    "train_seconds": round(result["train_seconds"], 1),
                    "examples_per_second": round(report["timings"]["examples_per_second"]),
                    "best_epoch": result["best_epoch"],
                    "epochs_run": result["epochs_run"],
                    "validation_recall@20": round(result["validation"]["recall@20"], 4),
                    "validation_ndcg@20": round(result["validation"]["ndcg@20"], 4),
                    "load_average_before": round(load, 2),
                }
            )
            print(json.dumps(runs[-1]), flush=True)

    doc = {
        "benchmark": "ddp",
        "dataset": "ml-100k (shortlist ingest + split defaults)",
        "overrides": ["towers.threads=1", *a.overrides],
        "runs": runs,
        "provenance": prov,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
