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
