"""Catalog re-embedding: chunked into a memmap-backed .npy, row order preserved."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shortlist.index.embed import embed_catalog


class FakeTower:
    """Deterministic item tower: a normalised vector derived from the numeric id."""

    embedding_dim = 8

    def __init__(self):
        self.calls: list[int] = []

    def embed_items(self, items: pd.DataFrame, batch_size: int = 4096) -> np.ndarray:
        self.calls.append(len(items))
        ids = items["item_id"].str.slice(1).astype(int).to_numpy()
        x = np.stack([np.sin(ids * (j + 1)) for j in range(self.embedding_dim)], axis=1) + 1.5
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_chunks_are_written_in_order(tmp_path):
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(1003)]})
    tower, stats = FakeTower(), {}
    out = embed_catalog(
        tower, items, tmp_path / "e.npy", batch_size=100, progress=False, stats=stats
    )
    assert tower.calls == [100] * 10 + [3]  # never the whole catalog at once
    assert isinstance(out, np.memmap) and out.shape == (1003, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out, tower.embed_items(items), rtol=1e-6)
    assert stats["items"] == 1003 and stats["items_per_second"] > 0
    assert not list(tmp_path.glob(".*partial"))
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy", allow_pickle=False), out)


def test_wrong_shape_is_an_error_and_leaves_no_file(tmp_path):
    class Broken(FakeTower):
        def embed_items(self, items, batch_size=4096):
            return super().embed_items(items)[:, :4]

    with pytest.raises(ValueError, match="expected"):
        embed_catalog(
            Broken(),
            pd.DataFrame({"item_id": ["i1", "i2"]}),
            tmp_path / "e.npy",
            batch_size=10,
            progress=False,
        )
    assert not (tmp_path / "e.npy").exists()
