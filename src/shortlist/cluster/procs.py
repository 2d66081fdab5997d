"""Process and port helpers for the local cluster (Linux /proc): start times, process
trees, liveness that a recycled pid cannot fool, free ports on HOST, waiting for
readiness, log tails, HTTP health checks and Popen keywords to run as another user."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import random
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from shortlist.cluster.base import HOST, RESERVED_PORTS, ClusterError


def start_time(pid: int) -> str | None:
    """Start time of a live, non-zombie process in clock ticks since boot (Linux)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else fields[19]


def proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, state) of every process (Linux /proc)."""
    out = {}
    for path in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        out[int(path.split("/")[2])] = (int(fields[1]), int(fields[2]), fields[0])
    return out


def process_tree(pid: int) -> set[int]:
    """The live (non-zombie) processes of pid's process group and all their descendants."""
    table = proc_table()
    found = {p for p, (_, pgid, _) in table.items() if pgid == pid} | {pid}
    grew = True
    while grew:
        more = {p for p, (ppid, _, _) in table.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return {p for p in found if p in table and table[p][2] != "Z"}


def reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def alive(pids: set[int], started: dict[int, str | None]) -> set[int]:
    """Those of pids still running as the same processes (a recycled pid does not count)."""
    out = set()
    for pid in pids:
        reap(pid)
        now = start_time(pid)
        if now is not None and now == started.get(pid, now):
            out.add(pid)
    return out


def free_port(taken: set[int], low: int = 20_000, high: int = 32_000) -> int:
    """A port the kernel says is free, below its ephemeral range, not reserved or taken."""
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(low, high)
        if port in taken or port in RESERVED_PORTS:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise ClusterError("no free port found")


def bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def wait(what: str, ready: Any, proc: subprocess.Popen | None, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ClusterError(f"{what} exited with {proc.returncode}:\n{tail(log)}")
        try:
            if ready():
                return
        except ClusterError:
            raise
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.5)
    raise ClusterError(f"{what} not ready after {timeout:.0f} s:\n{tail(log)}")


def tail(log: Path, n: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def as_user(user: pwd.struct_passwd | None) -> dict[str, Any]:
    """Popen keywords that run the child as `user` (None: as this process)."""
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
