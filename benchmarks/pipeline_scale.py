"""Benchmark: the whole retrain at scale, stage by stage (default 10M interactions x 1M items
x 500k users).

Runs the retrain DAG's stages in the DAG's order through the product's own CLI, each stage
in its own process as an Airflow task would run it: synth -> validate -> split ->
train-towers -> train-ranker -> evaluate -> build-bundle -> canary. Every stage's wall time
and peak RSS (the process's own, from wait4) go to benchmarks/results/pipeline_scale.json,
rewritten after each stage so a run that stops part-way still records what it measured.
Targets: the whole run <= 60 min and every stage <= 8 GiB peak RSS.

The params are the repository's params.yaml with the working paths under --work, plus
any --set given here (recorded in the result: a run with overrides is not the defaults).

    .venv/bin/python benchmarks/pipeline_scale.py [--interactions N --items M --users U]
        [--set towers.epochs=1] [--work DIR] [--keep] [--only train_towers --out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from shortlist.config import load_params

if __package__:  # imported as benchmarks.<name>
    from .provenance import provenance
else:  # run as a script: benchmarks/ is sys.path[0]
    from provenance import provenance

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "pipeline_scale.json"
TARGET_WALL_S = 3600.0
TARGET_RSS_GIB = 8.0
SHORTLIST = [sys.executable, "-m", "shortlist"]


def stages(work: Path, args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(name, CLI arguments) of each stage, in the retrain DAG's order."""
    data, split, model = work / "data", work / "split", work / "model"
    size = ["--users", str(args.users), "--items", str(args.items)]
    return [
        ("synth", ["synth", *size, "--interactions", str(args.interactions), "--out", str(data)]),
        ("validate", ["validate", str(data)]),
        ("split", ["split", str(data), "--out", str(split)]),
        ("train_towers", ["train-towers", str(split), "--out", str(model)]),
        ("train_ranker", ["train-ranker", str(split), "--model", str(model)]),
        ("evaluate", ["evaluate", str(model), str(split)]),
        ("build_bundle", ["build-bundle", str(model), "--data", str(data)]),
        ("canary", ["canary", "--slot", "idle"]),
    ]


def run_stage(argv: list[str], log: Path) -> dict[str, Any]:
    """Run one stage as its own process; its wall time, CPU time, peak RSS and exit code."""
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall_s": round(time.perf_counter() - started, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),  # ru_maxrss is in KiB
        "exit_code": proc.returncode,
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def summarise(records: dict[str, dict[str, Any]], order: list[str]) -> dict[str, Any]:
    """The run against its targets: the sum of the stages' wall times and the largest
    stage peak; complete when every stage ran and exited 0."""
    failed = [name for name in order if records.get(name, {}).get("exit_code", 0) != 0]
    wall = round(sum(r["wall_s"] for r in records.values()), 1)
    peak = max(r["peak_rss_gib"] for r in records.values())
    return {
        "completed": not failed and all(name in records for name in order),
        "stopped_at": failed[0] if failed else None,
        "wall_s": wall,
        "peak_rss_gib": peak,
        "peak_stage": max(records, key=lambda k: records[k]["peak_rss_gib"]),
        "wall_met": wall <= TARGET_WALL_S,
        "rss_met": peak <= TARGET_RSS_GIB,
    }


def tail(path: Path, n: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=500_000)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--interactions", type=int, default=10_000_000)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--work", type=Path, default=REPO / ".shortlist" / "bench" / "pipeline_scale")
    ap.add_argument("--keep", action="store_true", help="keep the work directory afterwards")
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated stages to run again on a kept --work directory (e.g. a stage "
        "changed since the whole run); its params.yaml is rewritten with this run's --set",
    )
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args(argv)

    work = args.work.resolve()
    only = [name for name in args.only.split(",") if name]
    if only:
        if not (work / "params.yaml").exists():
            ap.error(f"--only needs a kept run in {work} (run once with --keep)")
    else:
        shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    params = load_params(REPO / "params.yaml").under(work).with_overrides(args.overrides)
    params = params.with_overrides({"mlflow.tracking_uri": f"sqlite:///{work / 'mlflow.db'}"})
    params_file = work / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(), sort_keys=False))

    prov = provenance(__file__, argv)
    result: dict[str, Any] = {
        "benchmark": "pipeline_scale",
        "size": {"interactions": args.interactions, "items": args.items, "users": args.users},
        "overrides": args.overrides,
        "targets": {"wall_s": TARGET_WALL_S, "peak_rss_gib": TARGET_RSS_GIB},
        "provenance": prov,
        "stages": {},
    }
    if only and args.out.exists():  # a rerun replaces its stages in the earlier result
        result = json.loads(args.out.read_text())
        result.setdefault("reruns", []).append(
            {"stages": only, "overrides": args.overrides, "provenance": prov}
        )
    planned = stages(work, args)
    order = [name for name, _ in planned]
    unknown = set(only) - set(order)
    if unknown:
        ap.error(f"unknown stages {sorted(unknown)}; known: {order}")
    planned = [(name, cli) for name, cli in planned if not only or name in only]
    for name, cli in planned:
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        log = work / "logs" / f"{name}.log"
        record = run_stage([*SHORTLIST, *cli[:1], "--params", str(params_file), *cli[1:]], log)
        record["commit"] = prov.get("commit")
        result["stages"][name] = record
        print(f"    {json.dumps(record)}", flush=True)
        failed = record["exit_code"] != 0
        if failed:
            record["log_tail"] = tail(log)
            print(record["log_tail"], flush=True)
        result["stages"] = {k: result["stages"][k] for k in order if k in result["stages"]}
        result["summary"] = summarise(result["stages"], order)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        if failed:
            break
    for name in ("towers.json", "ranker_metrics.json", "metrics.json"):
        found = sorted(work.rglob(name))
        if found:
            doc = json.loads(found[-1].read_text())
            result.setdefault("outputs", {})[name] = {
                k: v for k, v in doc.items() if len(json.dumps(v)) <= 2000
            }
    # Paths inside the repository are written relative to it.
    text = json.dumps(result, indent=2).replace(f"{REPO}/", "")
    args.out.write_text(text + "\n")
    print(json.dumps(result["summary"], indent=2))
    if not args.keep and not only:
        shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
