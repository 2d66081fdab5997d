"""ANN indexes against exact search on clustered (not uniform) normalised vectors."""

from __future__ import annotations

import numpy as np
import pytest

from shortlist.config import IndexParams
from shortlist.index import ann


def clustered(n: int, d: int, clusters: int, seed: int) -> np.ndarray:
    """Mixture of Gaussians on the sphere: the structure real embeddings have."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    items = clustered(6000, 32, 40, seed=1)
    queries = clustered(200, 32, 40, seed=2)
    _, exact = ann.exact_search(items, queries, 100)
    return items, queries, exact


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf_flat", "ivf_pq"])
def test_recall_against_exact(data, kind):
    items, queries, exact = data
    p = IndexParams(
        type=kind, nlist=64, nprobe=16, pq_m=8, refine_factor=8, ef_construction=80, ef_search=256
    )
    stats: dict = {}
    index = ann.build_index(items, p, stats=stats)
    assert index.ntotal == len(items)
    assert stats["type"] == kind and stats["build_seconds"] >= 0
    assert ann.index_kind(index) == kind
    _, rows = ann.search(index, queries, 100)
    r10 = ann.recall_at_k(rows, exact, 10)
    r100 = ann.recall_at_k(rows, exact, 100)
    if kind == "flat":
        assert r10 == 1.0 and r100 == 1.0
    else:
        assert r10 >= 0.9, r10
        assert r100 >= 0.85, r100


def test_search_params_change_quality(data):
    items, queries, exact = data
    index = ann.build_index(items, IndexParams(type="ivf_flat", nlist=64, nprobe=1))
    _, rows1 = ann.search(index, queries, 10)
    ann.set_search_params(index, {"nprobe": 32})
    _, rows32 = ann.search(index, queries, 10)
    assert ann.recall_at_k(rows32, exact, 10) > ann.recall_at_k(rows1, exact, 10)


def test_auto_picks_by_size():
    p = IndexParams(type="auto", flat_max_items=100, hnsw_max_items=1000, ivf_flat_max_items=5000)
    assert ann.resolve_type(100, p) == "flat"
    assert ann.resolve_type(101, p) == "hnsw"
    assert ann.resolve_type(1001, p) == "ivf_flat"
    assert ann.resolve_type(5001, p) == "ivf_pq"
    assert ann.resolve_type(10, IndexParams(type="ivf_flat")) == "ivf_flat"


def test_auto_picks_ivf_pq_with_compact_refine_when_floats_exceed_the_budget():
    # 100k x 64 float32 = 24.4 MiB: flat by size, but not within a 20 MiB budget.
    p = IndexParams(type="auto", flat_max_items=10**6, pq_m=16, nlist=256)
    n, d = 100_000, 64
    assert ann.plan_index(n, d, p, budget_bytes=64 * 2**20).type == "flat"
    tight = ann.plan_index(n, d, p, budget_bytes=20 * 2**20)
    # float refine (~26 MiB) does not fit, fp16 (~14 MiB) does.
    assert (tight.type, tight.refine) == ("ivf_pq", "fp16")
    assert tight.estimated_bytes <= 20 * 2**20 and "budget" in tight.reason
    tighter = ann.plan_index(n, d, p, budget_bytes=10 * 2**20)
    assert (tighter.type, tighter.refine) == ("ivf_pq", "sq8")
    # Beyond ivf_flat_max_items with room to spare, refine keeps exact float vectors.
    big = IndexParams(flat_max_items=10, hnsw_max_items=20, ivf_flat_max_items=50_000)
    assert ann.plan_index(n, d, big, budget_bytes=2**40).refine == "flat"
    # The budget comes from params when not given; an explicit refine type is kept.
    fixed = IndexParams(type="auto", flat_max_items=10**6, memory_budget_mb=20, refine_type="sq8")
    plan = ann.plan_index(n, d, fixed)
    assert (plan.type, plan.refine, plan.budget_bytes) == ("ivf_pq", "sq8", 20 * 2**20)
    assert ann.resolve_type(n, fixed, dim=d) == "ivf_pq"
    assert ann.resolve_type(n, fixed) == "flat"  # size rule alone without a dimension
    assert ann.memory_budget_bytes(IndexParams()) > 0  # half of what is available


@pytest.mark.parametrize("refine", ["flat", "fp16", "sq8"])
def test_ivf_pq_refine_stores_against_exact(data, refine):
    items, queries, exact = data
    p = IndexParams(type="ivf_pq", nlist=64, nprobe=16, pq_m=8, refine_factor=8)
    p = p.model_copy(update={"refine_type": refine})
    stats: dict = {}
    index = ann.build_index(items, p, stats=stats)
    assert ann.index_kind(index) == "ivf_pq"
    assert stats["params"]["refine_type"] == refine and stats["plan"]["refine"] == refine
    _, rows = ann.search(index, queries, 10)
    assert ann.recall_at_k(rows, exact, 10) >= 0.9
    # What a bundle stores and serving loads: the same index, search knobs re-applied.
    import faiss

    loaded = faiss.deserialize_index(faiss.serialize_index(index))
    ann.set_search_params(loaded, stats["params"])
    np.testing.assert_array_equal(ann.search(loaded, queries, 10)[1], rows)


def test_pq_width_without_a_good_divisor_is_padded_not_coarsened():
    assert ann.pq_layout(64, 32) == (32, 64) and ann.pq_layout(64, 16) == (16, 64)
    assert ann.pq_layout(65, 32) == (33, 66)  # embedding + popularity column: 2 dims each
    assert ann.pq_layout(65, 16) == (17, 68)
    assert ann.pq_layout(8, 16) == (8, 8)
    items = clustered(6000, 33, 40, seed=5)  # 33 = 3 x 11: PQ8 would have no divisor
    queries = clustered(200, 33, 40, seed=6)
    _, exact = ann.exact_search(items, queries, 10)
    p = IndexParams(type="ivf_pq", nlist=64, nprobe=1, pq_m=8, refine_factor=8, refine_type="fp16")
    stats: dict = {}
    index = ann.build_index(items, p, stats=stats)
    assert index.d == 33 and stats["params"]["pq_m"] == 9 and stats["params"]["padded_dim"] == 36
    assert ann.index_kind(index) == "ivf_pq"
    r1 = ann.recall_at_k(ann.search(index, queries, 10)[1], exact, 10)
    ann.set_search_params(index, {"nprobe": 16})  # reaches through the padding
    _, rows = ann.search(index, queries, 10)
    assert ann.recall_at_k(rows, exact, 10) >= 0.9 > r1
    import faiss

    loaded = faiss.deserialize_index(faiss.serialize_index(index))
    ann.set_search_params(loaded, {"nprobe": 16, "refine_factor": 8})
    np.testing.assert_array_equal(ann.search(loaded, queries, 10)[1], rows)


def test_compact_refine_is_smaller(data):
    items = data[0]
    sizes = {}
    for refine in ("flat", "fp16", "sq8"):
        p = IndexParams(type="ivf_pq", nlist=64, pq_m=8, refine_type=refine)
        sizes[refine] = ann.index_bytes(ann.build_index(items, p))
        estimate = ann.estimate_bytes("ivf_pq", len(items), items.shape[1], p, refine)
        assert abs(sizes[refine] - estimate) < 0.1 * estimate, (refine, sizes[refine], estimate)
    assert sizes["sq8"] < sizes["fp16"] < sizes["flat"]


def test_exact_search_matches_numpy_and_pads():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(50, 8)).astype(np.float32)
    queries = rng.normal(size=(5, 8)).astype(np.float32)
    scores, rows = ann.exact_search(items, queries, 5, chunk=7)  # chunks cross the heap
    expected = np.argsort(-(queries @ items.T), axis=1)[:, :5]
    np.testing.assert_array_equal(rows, expected)
    _, padded = ann.search(ann.build_index(items[:3], IndexParams(type="flat")), queries, 5)
    assert (padded[:, 3:] == -1).all()


def test_recall_at_k_counts_overlap():
    exact = np.array([[0, 1, 2, 3]])
    assert ann.recall_at_k(np.array([[0, 1, 9, 8]]), exact, 4) == 0.5
    assert ann.recall_at_k(np.array([[3, 2, 1, 0]]), exact, 4) == 1.0
    assert ann.pq_subquantizers(64, 16) == 16 and ann.pq_subquantizers(48, 20) == 16


def test_recall_counts_tied_items_as_hits():
    # Item 4 duplicates item 1: an index returning 4 instead of 1 loses no quality.
    items = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1], [0.8, 0.6]], dtype=np.float32)
    query = np.array([[1, 0]], dtype=np.float32)
    exact_scores, exact = ann.exact_search(items, query, 2)
    swapped = np.array([[0, 4 if exact[0, 1] == 1 else 1]])
    assert ann.recall_at_k(swapped, exact, 2) == 0.5
    found = ann.exact_scores_of(items, query, swapped)
    kw = {"ann_scores": found, "exact_scores": exact_scores}
    assert ann.recall_at_k(swapped, exact, 2, **kw) == 1.0
    worse = np.array([[0, 2]])  # a genuinely worse item is still a miss
    kw = {"ann_scores": ann.exact_scores_of(items, query, worse), "exact_scores": exact_scores}
    assert ann.recall_at_k(worse, exact, 2, **kw) == 0.5


def test_measure_recall_reports_tie_aware_and_strict():
    rng = np.random.default_rng(1)
    items = rng.normal(size=(300, 8)).astype(np.float32)
    items[150:] = items[:150]  # every vector twice: strict overlap may fall, ties may not
    queries = rng.normal(size=(20, 8)).astype(np.float32)
    index = ann.build_index(items, IndexParams(type="hnsw"))
    m = ann.measure_recall(index, items, queries, (10, 100))
    assert m["recall@10"] >= m["strict_recall@10"]
    assert m["recall@10"] > 0.95 and m["queries_per_second"] > 0
