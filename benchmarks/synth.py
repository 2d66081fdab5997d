"""Benchmark: synthetic generation at scale (default 10M interactions x 1M items x 500k users).

Generates into a temporary directory (deleted afterwards), measures wall time, CPU time
and peak resident memory of this process, and writes benchmarks/results/synth.json.
Targets: <= 120 s wall, <= 4 GiB peak RSS. Wall time depends on what else the machine
runs; CPU time and the load average are recorded beside it for that reason.

    .venv/bin/python benchmarks/synth.py [--interactions N --items M --users U]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

from shortlist.config import SynthParams
from shortlist.data.synth import SynthSpec, write_synth

if __package__:  # imported as benchmarks.<name>
    from .provenance import provenance
else:  # run as a script: benchmarks/ is sys.path[0]
    from provenance import provenance

RESULT = Path(__file__).resolve().parent / "results" / "synth.json"
TARGET_WALL_S = 120.0
TARGET_RSS_GIB = 4.0


class RssSampler(threading.Thread):
    """Samples current RSS every 50 ms (ru_maxrss gives the peak; this gives the shape)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_kib = 0
        self.stop = threading.Event()

    def run(self) -> None:
        page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
        while not self.stop.is_set():
            with open("/proc/self/statm") as fh:
                self.peak_kib = max(self.peak_kib, int(fh.read().split()[1]) * page_kib)
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=500_000)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--interactions", type=int, default=10_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args(argv)

    defaults = SynthParams()  # the generator's knobs as shipped in params.yaml's defaults
    spec = SynthSpec.from_params(
        defaults, users=args.users, items=args.items, interactions=args.interactions, seed=args.seed
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    before = provenance(__file__, argv)  # commit, CPU, probe and load before the run
    sampler = RssSampler()
    sampler.start()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="shortlist-synth-bench-") as tmp:
        checksums, rows = write_synth(spec, tmp)
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        sizes = {name: (Path(tmp) / name).stat().st_size for name in rows}
    sampler.stop.set()
    sampler.join()
    peak_kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, sampler.peak_kib)
    result = {
        "benchmark": "synth",
        "command": " ".join(
            [".venv/bin/python benchmarks/synth.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "data": "synthetic (shortlist.data.synth), generator spec below",
        "spec": spec.as_dict(),
        "rows": rows,
        "file_mib": {k: round(v / 2**20, 1) for k, v in sizes.items()},
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "interactions_per_s": round(rows["interactions.parquet"] / wall),
        "peak_rss_gib": round(peak_kib / 2**20, 2),
        "rss_before_gib": round(rss_before / 2**20, 2),
        "targets": {"wall_s": TARGET_WALL_S, "peak_rss_gib": TARGET_RSS_GIB},
        "meets_targets": {
            "wall_s": wall <= TARGET_WALL_S,
            "peak_rss_gib": peak_kib / 2**20 <= TARGET_RSS_GIB,
        },
        "provenance": before,
        "machine": {
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "note": "wall time is shared-machine time: a load average above the CPU count "
            "means other work competed for the cores; cpu_s is this process's own time",
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("rows", "wall_s", "cpu_s", "peak_rss_gib")}))
    print(
        f"synth {rows['interactions.parquet']:,} interactions x {spec.items:,} items x "
        f"{spec.users:,} users: {wall:.1f} s wall ({cpu:.1f} s CPU), peak RSS "
        f"{peak_kib / 2**20:.2f} GiB -> {args.out}"
    )
    return result


if __name__ == "__main__":
    main()
