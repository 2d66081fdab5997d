"""The GIL-friendly loaders give what their one-shot counterparts give."""

from __future__ import annotations

import numpy as np
import pandas as pd

from shortlist.bundle import gentle


def test_sliced_loaders_match_one_shot(tmp_path, monkeypatch):
    monkeypatch.setattr(gentle, "CHUNK", 7)  # many slices, a ragged last one
    frame = pd.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(50)],
            "genres": [["a", "b"][: k % 3] for k in range(50)],
            "year": np.arange(50, dtype=float),
        }
    )
    path = tmp_path / "items.parquet"
    frame.to_parquet(path, index=False)
    got = gentle.read_parquet(path)
    want = pd.read_parquet(path)
    pd.testing.assert_frame_equal(got, want)
    ids = gentle.string_column(path, "item_id")
    assert ids.dtype == object and ids.tolist() == frame["item_id"].tolist()
    assert gentle.same_sequence(got["item_id"].array, ids)
    assert not gentle.same_sequence(ids[::-1], ids)


def test_position_map_is_a_dict_of_positions(monkeypatch):
    monkeypatch.setattr(gentle, "CHUNK", 5)
    keys = np.array([f"item-{k}" for k in range(123)], dtype=object)
    m = gentle.PositionMap(keys)
    assert dict(m) == {k: i for i, k in enumerate(keys)}
    assert len(m) == 123 and "item-7" in m and m["item-122"] == 122
    assert "nope" not in m and m.get("nope", -1) == -1


def test_load_guards_restore_the_interpreter():
    import gc
    import sys

    interval, frozen = sys.getswitchinterval(), gc.get_freeze_count()
    with gentle.short_switch_interval(), gentle.no_full_collections():
        assert sys.getswitchinterval() < interval
        assert not gc.isenabled()
        built = [[k] for k in range(1000)]  # tracked objects made during the load
    assert sys.getswitchinterval() == interval and gc.isenabled()
    assert gc.get_freeze_count() >= frozen + len(built)
    gc.unfreeze()  # leave the test process as it was
