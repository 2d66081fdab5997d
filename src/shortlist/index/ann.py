"""FAISS indexes over L2-normalised item embeddings, scored by inner product.

The index type is a params choice (`index.type`): exact flat search, HNSW, IVF-Flat, or
IVF-PQ with a refine step that re-ranks its shortlist with stored vectors. `auto` picks by
catalog size AND memory (`plan_index`): flat up to `flat_max_items`, HNSW up to
`hnsw_max_items` (its build takes minutes per million on 2 cores), IVF-Flat up to
`ivf_flat_max_items` (seconds to build, near-exact recall), IVF-PQ+refine beyond; and
whatever the size, IVF-PQ+refine when the chosen index would not fit
`index.memory_budget_mb`, with the refine vectors kept as float32, float16 or 8-bit scalar
codes, the most precise that fits (`index.refine_type`). Index rows are positions in the
bundle's id map, so no id translation lives inside FAISS. Quality is always measured
against exact search over the same vectors (`recall_at_k`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from shortlist.config import IndexParams

log = logging.getLogger(__name__)

INDEX_TYPES = ("flat", "hnsw", "ivf_flat", "ivf_pq")
#: How IVF-PQ keeps the vectors its refine step re-ranks with, most precise first.
REFINE_TYPES = ("flat", "fp16", "sq8")
#: Bytes per vector component of each refine store.
REFINE_BYTES = {"flat": 4.0, "fp16": 2.0, "sq8": 1.0}


def _faiss():
    import faiss

    return faiss


def _index_params(params: Any) -> IndexParams:
    """Accept the whole Params object or its `index` section."""
    return params.index if hasattr(params, "index") else params


def _metric(metric: str) -> int:
    faiss = _faiss()
    if metric == "ip":
        return faiss.METRIC_INNER_PRODUCT
    if metric == "l2":
        return faiss.METRIC_L2
    raise ValueError(f"unknown metric {metric!r} (use 'ip' or 'l2')")


@dataclass(frozen=True)
class IndexPlan:
    """The index `auto` chose for a catalog, with its memory estimate and the reason."""

    type: str
    refine: str | None  # the refine store of ivf_pq, else None
    estimated_bytes: int
    budget_bytes: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def available_memory_bytes() -> int:
    """Memory this process could still take: MemAvailable, capped by a cgroup v2 limit."""
    avail = 0
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            limit = fh.read().strip()
        with open("/sys/fs/cgroup/memory.current") as fh:
            used = int(fh.read().strip())
        if limit != "max":
            left = max(0, int(limit) - used)
            avail = min(avail, left) if avail else left
    except (OSError, ValueError):
        pass
    return avail


def memory_budget_bytes(params: Any) -> int:
    """`index.memory_budget_mb` in bytes; when 0, half the memory available right now
    (the serving host runs other things beside the index)."""
    p = _index_params(params)
    if p.memory_budget_mb:
        return int(p.memory_budget_mb) * 2**20
    return available_memory_bytes() // 2


def estimate_bytes(kind: str, n_items: int, dim: int, params: Any, refine: str = "flat") -> int:
    """Approximate resident size of an index of `kind` over n x dim float32 vectors.

    flat: the vectors; HNSW: the vectors + 2*M int32 level-0 links; IVF-Flat: vectors +
    int64 ids; IVF-PQ: pq_m code bytes + int64 id per item, plus the refine store (4, 2 or
    1 bytes per component). Coarse centroids are added for the IVF types.
    """
    p = _index_params(params)
    n, d = int(n_items), int(dim)
    if kind == "flat":
        per_item = 4.0 * d
    elif kind == "hnsw":
        per_item = 4.0 * d + 8.0 * p.hnsw_m
    elif kind == "ivf_flat":
        per_item = 4.0 * d + 8
    elif kind == "ivf_pq":
        m, padded = pq_layout(d, p.pq_m)
        per_item = m + 8 + REFINE_BYTES[refine] * padded
    else:
        raise ValueError(f"unknown index type {kind!r} (one of {INDEX_TYPES})")
    centroids = 4 * d * effective_nlist(n, p.nlist) if kind.startswith("ivf") else 0
    return int(per_item * n + centroids)


def _size_choice(n_items: int, p: IndexParams) -> str:
    if n_items <= p.flat_max_items:
        return "flat"
    if n_items <= p.hnsw_max_items:
        return "hnsw"
    if n_items <= p.ivf_flat_max_items:
        return "ivf_flat"
    return "ivf_pq"


def plan_index(
    n_items: int, dim: int, params: Any, *, budget_bytes: int | None = None
) -> IndexPlan:
    """The index for n_items x dim vectors under `params.index`, and why.

    `auto` takes the size rule first; when that index's estimated size exceeds the memory
    budget it falls to IVF-PQ+refine, whose refine store (`refine_type: auto`) is the
    most precise of float32, float16 and SQ8 that fits. An explicit type is kept whatever
    the budget (the caller asked for it); its refine store follows the same rule.
    """
    p = _index_params(params)
    budget = memory_budget_bytes(p) if budget_bytes is None else int(budget_bytes)
    mib = 2**20
    if p.type != "auto":
        kind, reason = p.type, f"index.type is {p.type}"
    else:
        kind = _size_choice(n_items, p)
        reason = f"{n_items:,} items: {kind} by catalog size"
        if kind != "ivf_pq":
            need = estimate_bytes(kind, n_items, dim, p)
            if need > budget:
                reason = (
                    f"{kind} would take ~{need / mib:,.0f} MiB > budget {budget / mib:,.0f} MiB"
                )
                kind = "ivf_pq"
    refine = None
    if kind == "ivf_pq":
        fits = [r for r in REFINE_TYPES if estimate_bytes(kind, n_items, dim, p, r) <= budget]
        if p.refine_type != "auto":
            refine = p.refine_type
        elif fits:
            refine = fits[0]
        else:
            refine = REFINE_TYPES[-1]
            log.warning(
                "IVF-PQ+%s refine over %d x %d needs ~%.0f MiB, over the %.0f MiB budget",
                refine,
                n_items,
                dim,
                estimate_bytes(kind, n_items, dim, p, refine) / mib,
                budget / mib,
            )
        reason += f"; refine vectors as {refine}"
        if refine != "flat" and p.refine_type == "auto":
            floats = estimate_bytes(kind, n_items, dim, p, "flat")
            reason += f" (float32 refine ~{floats / mib:,.0f} MiB > budget {budget / mib:,.0f} MiB)"
    est = estimate_bytes(kind, n_items, dim, p, refine or "flat")
    return IndexPlan(kind, refine, est, budget, reason)


def resolve_type(n_items: int, params: Any, dim: int | None = None) -> str:
    """The concrete index type for a catalog of `n_items` under `params.index.type`.

    Without `dim` only the size rule applies; with it, the memory budget too (`plan_index`).
    """
    p = _index_params(params)
    if dim is None:
        return p.type if p.type != "auto" else _size_choice(n_items, p)
    return plan_index(n_items, dim, p).type


def effective_nlist(n_items: int, nlist: int) -> int:
    """nlist capped so every list has ~39 training points (FAISS's k-means minimum)."""
    return max(1, min(nlist, n_items // 39))


def pq_subquantizers(dim: int, pq_m: int) -> int:
    """The largest divisor of `dim` not above `pq_m` (PQ needs m | d)."""
    for m in range(min(pq_m, dim), 0, -1):
        if dim % m == 0:
            return m
    return 1


def pq_layout(dim: int, pq_m: int) -> tuple[int, int]:
    """(subquantizers, padded width) of IVF-PQ for `dim`-wide vectors and `pq_m` asked.

    PQ needs the width to be a multiple of the subquantizer count. When `pq_m` divides
    `dim` that is (pq_m, dim). Otherwise (a 64-d embedding plus a popularity column is 65
    wide, whose only divisors are 5, 13 and 65) each subquantizer keeps the dim // pq_m
    dimensions it would have had and the vectors are padded with zero columns to the
    next multiple, which leaves inner products and L2 distances unchanged.
    """
    dim, pq_m = int(dim), max(1, int(pq_m))
    if pq_m >= dim:
        return dim, dim
    if dim % pq_m == 0:
        return pq_m, dim
    dsub = max(1, dim // pq_m)
    m = -(-dim // dsub)
    return m, m * dsub


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _train_sample(vectors: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    if len(vectors) <= n:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(len(vectors), n, replace=False))
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def _add_in_chunks(index, vectors: np.ndarray, chunk: int = 262_144) -> None:
    # Chunks keep a memmap-backed matrix from being copied into RAM at once.
    for start in range(0, len(vectors), chunk):
        index.add(np.ascontiguousarray(vectors[start : start + chunk], dtype=np.float32))


def build_index(
    vectors: np.ndarray,
    params: Any,
    *,
    metric: str = "ip",
    stats: dict[str, Any] | None = None,
    budget_bytes: int | None = None,
):
    """Build the FAISS index chosen by `plan_index` over `vectors` (n, d) float32.

    `vectors` may be a memmap: it is read in chunks. Search parameters (efSearch, nprobe,
    refine factor) are applied before returning. Build seconds and the process memory
    growth are logged and, when `stats` is given, written into it (keys: type, items,
    dim, build_seconds, rss_delta_bytes, plan, params).
    """
    faiss = _faiss()
    p = _index_params(params)
    n, d = int(vectors.shape[0]), int(vectors.shape[1])
    if n == 0:
        raise ValueError("cannot build an index over zero vectors")
    plan = plan_index(n, d, p, budget_bytes=budget_bytes)
    kind = plan.type
    faiss.omp_set_num_threads(p.threads)
    fmetric = _metric(metric)
    rss0, t0 = _rss_bytes(), time.perf_counter()
    built: dict[str, Any] = {}
    if kind == "flat":
        index = faiss.IndexFlat(d, fmetric)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, p.hnsw_m, fmetric)
        index.hnsw.efConstruction = p.ef_construction
        built = {"hnsw_m": p.hnsw_m, "ef_construction": p.ef_construction}
    elif kind in ("ivf_flat", "ivf_pq"):
        nlist = effective_nlist(n, p.nlist)
        if kind == "ivf_flat":
            quantizer = faiss.IndexFlat(d, fmetric)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, fmetric)
            built = {"nlist": nlist}
        else:
            m, padded = pq_layout(d, p.pq_m)
            # 2**nbits PQ centroids want ~39 training points each.
            nbits = max(1, min(8, int(math.log2(max(n // 39, 2)))))
            refine = {"flat": "RFlat", "fp16": "Refine(SQfp16)", "sq8": "Refine(SQ8)"}
            spec = f"IVF{nlist},PQ{m}x{nbits},{refine[plan.refine]}"
            index = faiss.index_factory(padded, spec, fmetric)
            # Polysemous training (on by default for 8-bit codes) reorders PQ centroids for
            # Hamming filtering, which this index never uses: it dominated training time.
            faiss.downcast_index(
                faiss.downcast_index(index).base_index
            ).do_polysemous_training = False
            built = {"nlist": nlist, "pq_m": m, "pq_nbits": nbits, "refine_type": plan.refine}
            if padded != d:  # zero columns appended to items and queries alike
                pad = faiss.RemapDimensionsTransform(d, padded, True)
                index = faiss.IndexPreTransform(pad, index)
                built["padded_dim"] = padded
        # k-means on a sample: 64 points per list is plenty for the centroids and PQ.
        index.train(_train_sample(vectors, max(64 * nlist, 256 * 64), seed=0))
    else:
        raise ValueError(f"unknown index type {kind!r} (one of {INDEX_TYPES})")
    _add_in_chunks(index, vectors)
    set_search_params(index, p)
    seconds = time.perf_counter() - t0
    rss_delta = max(0, _rss_bytes() - rss0)
    log.info(
        "built %s index over %d x %d in %.1fs (%.1f s per million), memory +%.0f MiB (%s)",
        kind,
        n,
        d,
        seconds,
        seconds * 1e6 / n,
        rss_delta / 2**20,
        plan.reason,
    )
    if stats is not None:
        stats.update(
            type=kind,
            items=n,
            dim=d,
            build_seconds=round(seconds, 3),
            seconds_per_million=round(seconds * 1e6 / n, 3),
            rss_delta_bytes=rss_delta,
            plan=plan.to_dict(),
            params={**built, **search_params(kind, p)},
        )
    return index


def index_bytes(index) -> int:
    """Serialized size of `index`: what it occupies on disk and, loaded, in memory."""
    faiss = _faiss()
    writer = faiss.VectorIOWriter()
    faiss.write_index(index, writer)
    return int(writer.data.size())


def search_params(kind: str, params: Any) -> dict[str, int]:
    """The query-time knobs that matter for `kind` (recorded in the bundle manifest)."""
    p = _index_params(params)
    if kind == "hnsw":
        return {"ef_search": p.ef_search}
    if kind == "ivf_flat":
        return {"nprobe": p.nprobe}
    if kind == "ivf_pq":
        return {"nprobe": p.nprobe, "refine_factor": p.refine_factor}
    return {}


def _unwrap(index):
    """The index under any pre-transform (IVF-PQ's zero padding), downcast."""
    faiss = _faiss()
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index


def index_kind(index) -> str:
    """The Shortlist type name of a built or loaded FAISS index."""
    index = _unwrap(index)
    faiss = _faiss()
    if isinstance(index, faiss.IndexRefine):
        return "ivf_pq"
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexIVF):
        return "ivf_pq" if isinstance(index, faiss.IndexIVFPQ) else "ivf_flat"
    return "flat"


def set_search_params(index, params: Any) -> None:
    """Apply efSearch / nprobe / refine factor. `params` is IndexParams, Params or a dict
    of the keys `search_params` returns (as stored in a manifest)."""
    faiss = _faiss()
    if isinstance(params, dict):
        get = params.get
    else:
        p = _index_params(params)

        def get(key, default=None):
            return getattr(p, key, default)

    index = _unwrap(index)
    if isinstance(index, faiss.IndexRefine):
        if get("refine_factor") is not None:
            index.k_factor = float(get("refine_factor"))
        base = faiss.downcast_index(index.base_index)
        if get("nprobe") is not None:
            base.nprobe = int(get("nprobe"))
    elif isinstance(index, faiss.IndexHNSW):
        if get("ef_search") is not None:
            index.hnsw.efSearch = int(get("ef_search"))
    elif isinstance(index, faiss.IndexIVF) and get("nprobe") is not None:
        index.nprobe = int(get("nprobe"))


def _as_queries(queries: np.ndarray) -> np.ndarray:
    q = np.ascontiguousarray(queries, dtype=np.float32)
    return q.reshape(1, -1) if q.ndim == 1 else q


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, rows) per query; rows are -1 where fewer than k items exist."""
    q = _as_queries(queries)
    k_eff = max(1, min(int(k), int(index.ntotal)))
    scores, rows = index.search(q, k_eff)
    if k_eff < k:
        pad = k - k_eff
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
    return scores, rows


def exact_search(
    vectors: np.ndarray, queries: np.ndarray, k: int, *, chunk: int = 262_144
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k over `vectors`, streamed in row chunks so a
    memmap-backed catalog of any size stays in bounded memory."""
    faiss = _faiss()
    q = _as_queries(queries)
    n = len(vectors)
    k_eff = max(1, min(int(k), n))
    heap = faiss.ResultHeap(len(q), k_eff, keep_max=True)
    for start in range(0, n, chunk):
        block = np.ascontiguousarray(vectors[start : start + chunk], dtype=np.float32)
        d, i = faiss.knn(q, block, min(k_eff, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        i = np.where(i >= 0, i + start, -1)
        heap.add_result(np.ascontiguousarray(d), np.ascontiguousarray(i))
    heap.finalize()
    scores, rows = heap.D, heap.I
    if k_eff < k:
        scores = np.pad(scores, ((0, 0), (0, k - k_eff)), constant_values=-np.inf)
        rows = np.pad(rows, ((0, 0), (0, k - k_eff)), constant_values=-1)
    return scores, rows


def recall_at_k(
    ann_rows: np.ndarray,
    exact_rows: np.ndarray,
    k: int,
    *,
    ann_scores: np.ndarray | None = None,
    exact_scores: np.ndarray | None = None,
    tol: float = 1e-5,
) -> float:
    """Mean over queries of |ANN top-k ∩ exact top-k| / |exact top-k| (ANN quality only).

    With scores, ties count: an ANN result is also a hit when its exact score is within
    `tol` of the k-th exact score (the ann-benchmarks convention). Catalogs hold items with
    identical embeddings (cold items with the same content features), and which of a tied
    group exact search lists is arbitrary, so without this the set overlap under-reports
    an index that returns equally good items. `ann_scores` must be exact inner products
    (`exact_scores_of`), not an index's approximate ones.
    """
    ann = np.asarray(ann_rows)[:, :k]
    exact = np.asarray(exact_rows)[:, :k]
    if len(exact) == 0:
        return float("nan")
    tie_aware = ann_scores is not None and exact_scores is not None
    if tie_aware:
        ann_s, exact_s = np.asarray(ann_scores)[:, :k], np.asarray(exact_scores)[:, :k]
    hits = []
    for q, (a, e) in enumerate(zip(ann, exact, strict=True)):
        valid = e >= 0
        truth = set(e[valid].tolist())
        if not truth:
            continue
        found = a >= 0
        hit = np.isin(a, list(truth)) & found
        if tie_aware:
            hit |= found & (ann_s[q] >= exact_s[q][valid].min() - tol)
        hits.append(min(int(hit.sum()), len(truth)) / len(truth))
    return float(np.mean(hits)) if hits else float("nan")


def exact_scores_of(vectors: np.ndarray, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Exact inner products of each query with the vectors at `rows` (-inf where row < 0)."""
    q = _as_queries(queries)
    rows = np.asarray(rows)
    safe = np.where(rows >= 0, rows, 0)
    uniq = np.unique(safe)  # sorted: one gather from a memmap, not one per query
    pos = np.searchsorted(uniq, safe)
    scores = np.einsum("qd,qkd->qk", q, np.asarray(vectors[uniq], dtype=np.float32)[pos])
    return np.where(rows >= 0, scores, -np.inf)


def measure_recall(
    index, vectors: np.ndarray, queries: np.ndarray, ks: tuple[int, ...] = (10, 100)
) -> dict[str, float]:
    """ANN recall of `index` against exact search over `vectors` at each k in `ks`.

    `recall@K` is tie-aware (what the SLO reads); `strict_recall@K` is the plain set
    overlap, reported beside it so a gap between the two shows how tied the catalog is.
    `queries_per_second` is the index's batch search speed on these queries.
    """
    k = min(max(ks), len(vectors))
    t0 = time.perf_counter()
    _, ann_rows = search(index, queries, k)
    qps = len(_as_queries(queries)) / max(time.perf_counter() - t0, 1e-9)
    exact_s, exact_rows = exact_search(vectors, queries, k)
    ann_s = exact_scores_of(vectors, queries, ann_rows)
    out: dict[str, float] = {"queries_per_second": qps}
    for kk in ks:  # keys name the k asked for; a catalog smaller than k is searched whole
        at = min(kk, k)
        out[f"recall@{kk}"] = recall_at_k(
            ann_rows, exact_rows, at, ann_scores=ann_s, exact_scores=exact_s
        )
        out[f"strict_recall@{kk}"] = recall_at_k(ann_rows, exact_rows, at)
    return out
