"""The closed feedback loop, measured against the synthetic world's ground truth.

    OMP_NUM_THREADS=1 python benchmarks/feedback_loop.py [--rounds 10] [--users 300]
        [--items 400] [--interactions 6000] [--bandit-users 1000] [--set key=value ...]

Runs `shortlist.simulate` for both policies (no exploration; exploration with
propensity-aware ranker training and the bandit's cold section), each from the same
generated world and seed, with a retrain (the DAG's stages, in order) after every round,
then the bandit's first users against popularity-only and random lists. Writes
benchmarks/results/feedback_loop.json (per-round records, the summary, provenance) and
small plots under benchmarks/results/feedback_loop/: utility, homogenisation (overlap,
Gini, coverage) and the off-policy estimate against the truth, per round. MLflow runs go
to a SQLite store in a temporary directory unless --set mlflow.tracking_uri=... names one.
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

HERE = Path(__file__).resolve().parent
RESULT = HERE / "results" / "feedback_loop.json"
PLOTS = HERE / "results" / "feedback_loop"
REPO = HERE.parent


def plot(result: dict, out: Path) -> list[str]:
    """Small PNGs of the per-round measures, one line per policy; their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    panels = [
        ("true_utility", "true utility (mean preference of shown items)"),
        ("expected_clicks_per_list", "expected clicks per list"),
        ("overlap", "mean pairwise overlap of lists (Jaccard)"),
        ("gini", "Gini of item exposure"),
        ("coverage", "catalog coverage"),
        ("gate_metric", "gate's offline metric (challenger)"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for ax, (key, title) in zip(axes.ravel(), panels, strict=True):
        for pol in result["policies"]:
            rows = [r for r in pol["rounds"] if r.get(key) is not None]
            ax.plot([r["round"] for r in rows], [r[key] for r in rows], marker="o", ms=3,
                    label=pol["policy"])  # fmt: skip
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("round", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    path = out / "loop.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    written.append(str(path))

    fig, axes = plt.subplots(1, len(result["policies"]), figsize=(6 * len(result["policies"]), 3.5))
    axes = axes if hasattr(axes, "__len__") else [axes]
    for ax, pol in zip(axes, result["policies"], strict=True):
        rows = [r for r in pol["rounds"] if (r.get("off_policy") or {}).get("available")]
        rounds = [r["round"] for r in rows]
        snips = [r["off_policy"].get("snips", {}) for r in rows]
        lo = [s.get("ci", [None, None])[0] for s in snips]
        hi = [s.get("ci", [None, None])[1] for s in snips]
        ax.fill_between(rounds, lo, hi, alpha=0.25, label="SNIPS 95% interval")
        ax.plot(rounds, [s.get("value") for s in snips], marker="o", ms=3, label="SNIPS")
        ax.plot(rounds, [r["off_policy"]["truth"] for r in rows], marker="x", ms=4, color="k",
                label="true reward of the challenger")  # fmt: skip
        ax.set_title(f"{pol['policy']}: off-policy estimate vs truth", fontsize=9)
        ax.set_xlabel("round", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "off_policy.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    written.append(str(path))
    return written


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--retrain-every", type=int, default=1)
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--items", type=int, default=400)
    ap.add_argument("--interactions", type=int, default=6000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bandit-users", type=int, default=1000)
    ap.add_argument("--promote", choices=["blessed", "always"], default="blessed")
    ap.add_argument("--out", default=str(RESULT))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    a = ap.parse_args(argv)

    from shortlist import simulate
    from shortlist.config import load_params

    before = provenance(__file__, argv)
    with tempfile.TemporaryDirectory(prefix="feedback-loop-") as tmp:
        overrides = [
            "towers.threads=1",
            "ranker.threads=1",
            "evaluation.threads=1",
            f"mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db",
            *a.overrides,
        ]
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        params = load_params(REPO / "params.yaml", overrides)
        spec = simulate.SimSpec(
            users=a.users,
            items=a.items,
            interactions=a.interactions,
            rounds=a.rounds,
            retrain_every=a.retrain_every,
            k=a.k,
            seed=a.seed,
            promote=a.promote,
        )
        t0 = time.perf_counter()
        result = simulate.simulate(
            params,
            spec,
            Path(tmp) / "sim",
            bandit_users=a.bandit_users,
            on_round=lambda r: print(simulate.round_line(r), flush=True),
        )
        seconds = time.perf_counter() - t0
    result["seconds"] = seconds
    result["overrides"] = overrides[:3] + list(a.overrides)
    result["provenance"] = before
    result["plots"] = [str(Path(p).relative_to(REPO)) for p in plot(result, PLOTS)]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result["summary"], indent=2))
    if "bandit_first_users" in result:
        print(json.dumps(result["bandit_first_users"], indent=2))
    print(f"{seconds:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
