"""A bounded load generator for the serving API on loopback (tests and benchmarks).

`run_load` keeps `concurrency` closed-loop clients (one keep-alive HTTP connection each)
sending requests until `max_requests` were sent, `max_seconds` passed, or `stop` is set:
it can never run away. Every request is recorded (start/end on one monotonic clock,
status, parsed body or the error), so a test can line responses up against events such
as a promotion, and a benchmark can compute percentiles and throughput.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# (method, path, json body or None) for the n-th request
RequestFactory = Callable[[int], tuple[str, str, dict[str, Any] | None]]


@dataclass
class Sample:
    n: int
    method: str
    path: str
    payload: dict[str, Any] | None
    start: float  # time.perf_counter()
    end: float
    status: int  # 0 when the request itself failed (connection error, timeout)
    body: Any = None
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.end - self.start


def run_load(
    base_url: str,
    make_request: RequestFactory,
    *,
    max_requests: int,
    max_seconds: float,
    concurrency: int = 2,
    stop: threading.Event | None = None,
    timeout: float = 10.0,
    keep_bodies: bool = True,
    sink: list[Sample] | None = None,
) -> list[Sample]:
    """Send requests from `concurrency` threads; return every sample, in send order.

    `sink`: a list that receives each sample as it completes (to watch a run live)."""
    import httpx

    counter = itertools.count()
    deadline = time.perf_counter() + max_seconds
    samples: list[Sample] = sink if sink is not None else []
    lock = threading.Lock()
    stop = stop or threading.Event()

    def worker() -> None:
        with httpx.Client(base_url=base_url, timeout=timeout) as client:
            while not stop.is_set() and time.perf_counter() < deadline:
                n = next(counter)
                if n >= max_requests:
                    return
                method, path, payload = make_request(n)
                t0 = time.perf_counter()
                try:
                    resp = client.request(method, path, json=payload)
                    t1 = time.perf_counter()
                    body = None
                    if keep_bodies or resp.status_code != 200:
                        try:
                            body = resp.json()
                        except ValueError:
                            body = resp.text
                    sample = Sample(n, method, path, payload, t0, t1, resp.status_code, body)
                except httpx.HTTPError as exc:
                    t1 = time.perf_counter()
                    sample = Sample(n, method, path, payload, t0, t1, 0, error=repr(exc))
                with lock:
                    samples.append(sample)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max_seconds + timeout + 5)
    stop.set()
    with lock:
        return sorted(samples, key=lambda s: s.n)


def summarise(samples: list[Sample]) -> dict[str, Any]:
    """Count, failures, latency percentiles (ms) and throughput of a list of samples."""
    if not samples:
        return {"requests": 0}
    lat = np.array([s.latency for s in samples]) * 1000.0
    span = max(s.end for s in samples) - min(s.start for s in samples)
    return {
        "requests": len(samples),
        "failed": sum(1 for s in samples if s.status != 200),
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p95_ms": round(float(np.percentile(lat, 95)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
        "max_ms": round(float(lat.max()), 3),
        "mean_ms": round(float(lat.mean()), 3),
        "throughput_rps": round(len(samples) / span, 1) if span > 0 else None,
    }


def wait_ready(base_url: str, timeout: float = 60.0) -> dict[str, Any]:
    """Poll /ready until it answers 200 (returns its body) or raise TimeoutError."""
    import httpx

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(f"{base_url}/ready", timeout=2.0)
            if resp.status_code == 200:
                return resp.json()
            last = resp.text
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise TimeoutError(f"{base_url} not ready after {timeout}s: {last}")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
