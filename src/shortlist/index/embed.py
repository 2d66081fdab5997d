"""Full catalog re-embedding through one model's item tower, in bounded memory.

Every item of the catalog table (items with no interactions included) goes through the
item tower in chunks written straight into a memmap-backed `.npy`, so peak memory is one
chunk, not the catalog: 10M x 64 float32 is 2.4 GiB on disk and one chunk in RAM.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def embed_catalog(
    retriever: Any,
    items: pd.DataFrame,
    out_path: str | os.PathLike[str],
    *,
    batch_size: int,
    progress: bool = True,
    stats: dict[str, Any] | None = None,
) -> np.ndarray:
    """Embed `items` row by row order into `out_path` (.npy, float32, (n, d)).

    Rows are the retriever's serving-score item vectors (`models.vectors`: the
    L2-normalised item-tower embedding, plus the inference popularity column when the
    model has one, so an inner-product index serves the score offline evaluation
    measured); d is their width.
    Returns the file opened read-only as a memmap. `stats` (when given) receives items,
    seconds and items_per_second.
    """
    from tqdm.auto import tqdm

    from shortlist.models.vectors import serving_item_vectors, vector_width

    n, d = len(items), vector_width(retriever)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.partial")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, d))
    t0 = time.perf_counter()
    step = max(1, int(batch_size))
    with tqdm(total=n, unit="item", desc="embed items", disable=not progress) as bar:
        for start in range(0, n, step):
            chunk = items.iloc[start : start + step]
            vecs = serving_item_vectors(retriever, chunk, width=d, batch_size=min(step, 8192))
            if vecs.shape != (len(chunk), d):
                raise ValueError(f"item tower returned {vecs.shape}, expected {(len(chunk), d)}")
            out[start : start + len(chunk)] = vecs
            bar.update(len(chunk))
    out.flush()
    del out
    os.replace(tmp, out_path)  # a crash never leaves a truncated file under the real name
    seconds = time.perf_counter() - t0
    rate = n / seconds if seconds > 0 else float("inf")
    log.info("embedded %d items in %.1fs (%.0f items/s)", n, seconds, rate)
    if stats is not None:
        stats.update(items=n, seconds=round(seconds, 3), items_per_second=round(rate, 1))
    return np.load(out_path, mmap_mode="r", allow_pickle=False)
