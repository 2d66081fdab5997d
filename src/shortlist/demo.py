"""`make demo`: Shortlist's main job end to end on the embedded defaults.

    python -m shortlist.demo --dataset ../shared/datasets/ml-100k [--set key=value ...]

Runs the stages in order, in this process, through the same `pipelines.*.run`
functions the CLI, DVC and Airflow call: ingest (MovieLens 100K when --dataset holds
it, else the synthetic generator) → validate → split. Everything is written under the
params' work dir (.shortlist/ by default); at the end it prints where each output is.

The demo is a list of steps (`STEPS`); later stages append theirs. A step gets the
shared `Demo` state and returns the locations worth printing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shortlist.config import ConfigError, Params, load_params
from shortlist.errors import DataValidationError, ShortlistError
from shortlist.storage import is_remote

# Params that name local paths; made absolute (against the project dir) before the run
# so every stage and every printed location agree whatever the current directory.
PATH_KEYS = (
    "project.work_dir",
    "data.dir",
    "validation.reference_dir",
    "validation.quarantine_dir",
    "validation.docs_dir",
    "split.dir",
    "towers.out_dir",
    "bundle.root",
    "bundle.staging_dir",
    "serving.impressions_dir",
)


@dataclass
class Demo:
    """State shared by the steps: params, the dataset path, and what earlier steps made."""

    params: Params
    dataset: Path
    outputs: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Step:
    name: str
    doc: str
    run: Callable[[Demo], dict[str, str]]


def _ingest(demo: Demo) -> dict[str, str]:
    p = demo.params
    if (demo.dataset / "u.data").is_file():
        from pipelines import ingest

        manifest = ingest.run(
            p, source="movielens-100k", path=str(demo.dataset), out_dir=p.data.dir
        )
        what = f"MovieLens 100K from {demo.dataset}"
    else:
        from pipelines import synth

        manifest = synth.run(p, out_dir=p.data.dir)
        what = f"synthetic data ({demo.dataset} has no MovieLens 100K)"
    rows = manifest["rows"]
    n = rows.get("interactions.parquet", rows) if isinstance(rows, dict) else rows
    demo.notes.append(f"data: {what}, {n} interactions, snapshot {manifest['snapshot_id']}")
    return {"dataset": p.data.dir}


def _validate(demo: Demo) -> dict[str, str]:
    from pipelines import validate

    p = demo.params
    report = validate.run(p, data_dir=p.data.dir)
    print(report.summary())
    if not report.success:
        raise DataValidationError(
            f"validation failed; batch quarantined at {report.quarantine_path}"
        )
    out = {"reference": p.validation.reference_dir}
    if report.docs_path:
        out["data docs"] = str(report.docs_path)
    return out


def _split(demo: Demo) -> dict[str, str]:
    from pipelines import split

    p = demo.params
    manifest = split.run(p, data_dir=p.data.dir, out_dir=p.split.dir)
    counts = manifest["counts"]
    demo.notes.append(
        "split: " + ", ".join(f"{k} {counts[k]}" for k in ("train", "validation", "test"))
    )
    return {"split": p.split.dir}


STEPS: list[Step] = [
    Step("ingest", "import the dataset into the contract's Parquet tables", _ingest),
    Step("validate", "data contract (Great Expectations) and Data Docs", _validate),
    Step("split", "temporal train / validation / test split", _split),
]


def absolute_paths(params: Params, base: Path) -> Params:
    """Params with every relative local path in PATH_KEYS resolved against `base`."""
    changes = {}
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(params, section), name)
        if value and not is_remote(value) and not Path(value).is_absolute():
            changes[key] = str((base / value).resolve())
    return params.with_overrides(changes) if changes else params


def run(demo: Demo, steps: list[Step] | None = None) -> Demo:
    """Run the steps in order; a failing step raises and stops the demo."""
    steps = STEPS if steps is None else steps
    for i, step in enumerate(steps, 1):
        print(f"\n[{i}/{len(steps)}] {step.name}: {step.doc}", flush=True)
        started = time.perf_counter()
        made = step.run(demo)
        demo.outputs.update(made)
        print(f"[{i}/{len(steps)}] {step.name} done in {time.perf_counter() - started:.1f}s")
    return demo


def _report(demo: Demo) -> str:
    width = max((len(k) for k in demo.outputs), default=0)
    lines = ["", "Shortlist demo finished.", *demo.notes, "", "Outputs:"]
    lines += [f"  {k:<{width}}  {v}" for k, v in demo.outputs.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shortlist.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--dataset",
        default="../shared/datasets/ml-100k",
        help="MovieLens 100K directory; synthetic data is used when it is absent",
    )
    parser.add_argument("--params", help="params file (default: $SHORTLIST_PARAMS or params.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params, args.overrides)
        demo = Demo(params=absolute_paths(params, Path.cwd()), dataset=Path(args.dataset))
        run(demo)
    except (ConfigError, ShortlistError, FileNotFoundError) as exc:
        print(f"shortlist demo: {exc}", file=sys.stderr)
        return 1
    print(_report(demo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
