"""Where and on what a benchmark result was measured: every benchmark stores this under
the "provenance" key of the JSON it writes.

    if __package__:  # imported as benchmarks.<name>
        from .provenance import provenance
    else:  # run as a script: benchmarks/ is sys.path[0]
        from provenance import provenance
    ...
    result["provenance"] = provenance(__file__, argv)

Records the git commit of the working tree (and whether tracked files differed from it),
the CPU model, core count and a CPU speed probe, the load averages, the Python / NumPy /
torch / FAISS versions, and the command line. Timings on a shared host mean little
without the probe and the load: compare two runs only when both are close.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

#: Iterations of the probe's fixed pure-Python loop.
PROBE_LOOP = 10_000_000


def cpu_probe() -> float:
    """Seconds for a fixed pure-Python loop (10M additions): how fast this machine's CPU
    is right now. On shared hosts it varies by 2x over a day; compare latencies between
    runs only together with this number."""
    t0 = time.perf_counter()
    total = 0
    for i in range(PROBE_LOOP):
        total += i
    return round(time.perf_counter() - t0, 3)


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def git_state() -> dict[str, Any]:
    """The commit HEAD points at, and whether tracked files differ from it (untracked
    files are ignored: scratch output does not make a result dirty)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit or None, "dirty": bool(status) if status is not None else None}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo where there is one, else what the
    platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int | None:
    """Cores this process may run on (the affinity mask; a container may allow fewer
    than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _version(module: str, *dists: str) -> str | None:
    """A package's version without importing it (the benchmark imports what it uses);
    None when it is not installed."""
    loaded = sys.modules.get(module)
    if loaded is not None and getattr(loaded, "__version__", None):
        return str(loaded.__version__)
    from importlib import metadata

    for dist in dists or (module,):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def command_line(script: str | os.PathLike[str], argv: Sequence[str] | None = None) -> str:
    """The command as run from the repository root: the script's path relative to the
    repository and its arguments (sys.argv[1:] unless the caller passes its own)."""
    path = Path(script).resolve()
    try:
        shown = path.relative_to(REPO).as_posix()
    except ValueError:
        shown = path.name
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", shown, *map(str, args)])


def provenance(
    script: str | os.PathLike[str], argv: Sequence[str] | None = None, *, probe: bool = True
) -> dict[str, Any]:
    """Everything a reader needs to know where a result came from.

    `script` is the benchmark's `__file__`; `argv` the arguments its main() parsed
    (default sys.argv[1:]). `probe=False` skips the CPU probe (about half a second)."""
    return {
        **git_state(),
        "command": command_line(script, argv),
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "cpu_probe_seconds": cpu_probe() if probe else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "faiss": _version("faiss", "faiss-cpu", "faiss-gpu", "faiss"),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(provenance(__file__), indent=2))
