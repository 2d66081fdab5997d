"""Two-tower fit time on ml-100k: does training converge within 2 minutes on this machine?

Protocol (the retrieval benchmark's): per user with >= 5 interactions the last 20% by
(timestamp, item_id) is test and never read here; inside train the last 10% per user is
validation. Measured per seed: the wall time of `train_two_tower` as production runs it
(feature preparation, training with early stopping on validation Recall@20, then the refit
on train + validation for the chosen number of epochs), with params.yaml's settings and
`--set` overrides (e.g. `--set towers.batch_size=2048`). The load average is recorded beside
the times: other work on the machine slows every number here.
Results: benchmarks/results/towers_fit_time.json (or --out).

    .venv/bin/python benchmarks/towers_fit_time.py [--seeds 42 43 44] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__:  # imported as benchmarks.<name>
    from .provenance import provenance
else:  # run as a script: benchmarks/ is sys.path[0]
    from provenance import provenance

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "towers_fit_time.json"
TARGET_SECONDS = 120.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "ml-100k"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args(argv)
    prov = provenance(__file__, argv)  # before the fits: the probe reads the host as they start

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from retrieval_quality import protocol

    from shortlist.config import load_params
    from shortlist.data.movielens import load_ml100k
    from shortlist.models.fit import train_two_tower

    params = load_params(REPO / "params.yaml", a.overrides)
    interactions, items, users = load_ml100k(a.data)
    _, _, fit_part, validation = protocol(interactions)
    runs = []
    for seed in a.seeds:
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="towers-fit-") as tmp:
            _, summary = train_two_tower(
                params,
                fit_part,
                validation,
                items,
                users,
                seed=seed,
                progress=False,
                mlflow_run=False,
                out_dir=tmp,
            )
        seconds = time.perf_counter() - t0
        refit = summary.get("refit") or {}
        runs.append(
            {
                "seed": seed,
                "seconds": round(seconds, 1),
                "best_epoch": summary["best_epoch"],
                "epochs_run": summary["epochs_run"],
                "refit_epochs": refit.get("epochs"),
                "validation_recall@20": round(summary["validation"]["recall@20"], 4),
                "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            }
        )
        r = runs[-1]
        print(
            f"seed {seed}: {r['seconds']:.1f}s (early stopping: {r['epochs_run']} epochs, best "
            f"{r['best_epoch']}; refit: {r['refit_epochs']} epochs); validation Recall@20 "
            f"{r['validation_recall@20']:.4f}; load average {r['load_average']}",
            flush=True,
        )
    worst = max(r["seconds"] for r in runs)
    mean = sum(r["seconds"] for r in runs) / len(runs)
    result = {
        "benchmark": "towers_fit_time",
        "data": "MovieLens 100K (ml-100k), retrieval-issue protocol (fit part + validation)",
        "command": "python benchmarks/towers_fit_time.py " + " ".join(argv or sys.argv[1:]),
        "overrides": a.overrides,
        "threads": params.towers.threads,
        "runs": runs,
        "mean_seconds": round(mean, 1),
        "max_seconds": worst,
        "target_seconds": TARGET_SECONDS,
        "target_met_every_seed": worst <= TARGET_SECONDS,
        "provenance": prov,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"fit time mean {mean:.1f}s, max {worst:.1f}s over seeds {a.seeds} (target "
        f"{TARGET_SECONDS:.0f}s: {'met' if worst <= TARGET_SECONDS else 'NOT met'} for every "
        f"seed); wrote {a.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
