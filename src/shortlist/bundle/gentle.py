"""Loading steps that leave the GIL to requests in flight.

The serving process loads a new bundle in a background thread while request threads keep
answering from the live one. A single C call that holds the GIL for half a second (arrow
-> pandas conversion of a million strings, `dict(zip(...))` over a million ids) stalls
every request for that long: on a 1M-item bundle such calls pushed p99 during a swap to
7x steady state. Each helper here does the same work in slices of `CHUNK` rows and
releases the GIL between slices (`pause`), so no stall is longer than one slice (a few
milliseconds). Reading itself (`pyarrow.parquet.read_table`) already runs without the GIL.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

CHUNK = 4_096
SWITCH_INTERVAL = 0.0002  # seconds; CPython's default is 0.005


@contextlib.contextmanager
def short_switch_interval(seconds: float = SWITCH_INTERVAL) -> Iterator[None]:
    """Lower the interpreter's GIL switch interval while a background load runs.

    A request thread gives the GIL up at every torch/FAISS/numpy call and must win it
    back afterwards; with a CPU-bound loader thread holding it, each win-back waits up to
    the switch interval (5 ms by default), dozens of times per request: the GIL convoy
    effect, which turned a 20 ms request into 150-200 ms during a 1M-item load. Process-
    wide, restored on exit; a nested or concurrent use keeps the lowest setting."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, seconds))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@contextlib.contextmanager
def no_full_collections() -> Iterator[None]:
    """No cyclic garbage collection while a bundle loads; what the load built is then
    moved to the permanent generation (`gc.freeze`).

    A full (generation 2) collection walks every tracked object with the GIL held:
    with two bundles in memory that was 70-130 ms on a quiet machine and up to 300 ms
    under load, the longest stalls left during a swap. Frozen objects are never walked
    again; acyclic ones are still freed by reference counting when a bundle is dropped.
    The trade-off: garbage cycles among frozen objects are not reclaimed (bundles hold
    plain arrays, frames and modules, so this is small)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def pause() -> None:
    """Let a waiting thread take the GIL (sleep(0) releases and re-acquires it)."""
    time.sleep(0)


def read_parquet(path: str | Path) -> pd.DataFrame:
    """`pd.read_parquet`, converted to pandas a slice at a time."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if table.num_rows <= CHUNK:
        return table.to_pandas()
    parts = []
    for start in range(0, table.num_rows, CHUNK):
        parts.append(table.slice(start, CHUNK).to_pandas())
        pause()
    return pd.concat(parts, ignore_index=True)


def string_column(path: str | Path, column: str) -> np.ndarray:
    """One column of a Parquet file as a numpy object array of str, a slice at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    col = pq.read_table(path, columns=[column]).column(column)
    if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
        col = col.cast(pa.string())
    parts = []
    for start in range(0, len(col), CHUNK):
        parts.append(col.slice(start, CHUNK).to_numpy(zero_copy_only=False).astype(object))
        pause()
    return np.concatenate(parts) if parts else np.zeros(0, dtype=object)


class PositionMap(Mapping[str, int]):
    """{key: position} over many small dicts (sharded by hash).

    One dict of a million keys resizes in single GIL-holding steps of 50-90 ms as it
    grows; shards of a few thousand keys resize in well under a millisecond, and the
    build pauses between slices. Lookups cost one extra hash."""

    SHARDS = 256

    def __init__(self, keys: Sequence[str]) -> None:
        self._shards: list[dict[str, int]] = [{} for _ in range(self.SHARDS)]
        keys = np.asarray(keys, dtype=object)
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start : start + CHUNK]
            shard = np.fromiter(map(hash, chunk), dtype=np.int64, count=len(chunk))
            shard &= self.SHARDS - 1
            order = np.argsort(shard, kind="stable")
            bounds = np.searchsorted(shard[order], np.arange(self.SHARDS + 1))
            for s in range(self.SHARDS):
                sel = order[bounds[s] : bounds[s + 1]]
                if len(sel):
                    self._shards[s].update(
                        zip(chunk[sel].tolist(), (sel + start).tolist(), strict=True)
                    )
            pause()
        self._len = sum(len(d) for d in self._shards)

    def _shard(self, key: object) -> dict[str, int]:
        return self._shards[hash(key) & (self.SHARDS - 1)]

    def __getitem__(self, key: str) -> int:
        return self._shard(key)[key]

    def __contains__(self, key: object) -> bool:
        return key in self._shard(key)

    def get(self, key: str, default=None):
        return self._shard(key).get(key, default)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        for d in self._shards:
            yield from d


def same_sequence(a: Sequence, b: Sequence) -> bool:
    """Whether two equally long sequences hold equal elements, compared a slice at a time."""
    if len(a) != len(b):
        return False
    for start in range(0, len(a), CHUNK):
        x = np.asarray(a[start : start + CHUNK], dtype=object)  # converts one slice only
        if not np.array_equal(x, np.asarray(b[start : start + CHUNK], dtype=object)):
            return False
        pause()
    return True
