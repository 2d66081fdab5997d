"""Candidate sources beside the towers: hand-computed ItemKNN scores, the union's order."""

from __future__ import annotations

import numpy as np
import pandas as pd

from shortlist.ranking.cooccurrence import ItemNeighbours
from shortlist.ranking.sources import (
    CandidateSources,
    catalog_maps,
    extra_columns,
    first_allowed,
    item_to_item,
    popular_order,
    trend_popularity,
)


def _table() -> ItemNeighbours:
    # Row r lists (neighbour, sim): 0 -> (1, .9), (2, .5); 1 -> (0, .9), (3, .4);
    # 2 -> (3, .8); 3 -> (2, .8), (1, .4); 4 -> nothing.
    indptr = np.array([0, 2, 4, 5, 7, 7])
    indices = np.array([1, 2, 0, 3, 3, 2, 1], np.int32)
    sims = np.array([0.9, 0.5, 0.9, 0.4, 0.8, 0.8, 0.4], np.float32)
    return ItemNeighbours(indptr, indices, sims)


def test_item_to_item_sums_similarities_over_the_history():
    t = _table()
    # History {0, 2}: scores 1 -> .9, 2 -> .5, 3 -> .8 (item 0 is history, not excluded here).
    assert item_to_item(t, np.array([0, 2]), 3, np.array([], np.int64)).tolist() == [1, 3, 2]
    # History {0, 1}: 1 -> .9, 2 -> .5, 0 -> .9, 3 -> .4; history excluded: 2 then 3.
    got = item_to_item(t, np.array([0, 1]), 5, np.array([0, 1]))
    assert got.tolist() == [2, 3]
    assert item_to_item(t, np.array([4]), 3, np.array([], np.int64)).size == 0
    assert item_to_item(t, np.array([0]), 0, np.array([], np.int64)).size == 0


def test_first_allowed_skips_the_excluded():
    order = np.array([5, 3, 9, 1, 0])
    assert first_allowed(order, 2, np.array([3])).tolist() == [5, 9]
    assert first_allowed(order, 10, np.array([5, 3])).tolist() == [9, 1, 0]


def test_extra_never_repeats_the_towers_or_the_excluded():
    src = CandidateSources(_table(), popular_order(np.array([0.1, 0.2, 0.3, 0.9, 1.0])), 3, 2)
    more = src.extra(np.array([0]), towers=np.array([1]), exclude=np.array([0]))
    # i2i of {0}: 1 (towers), 2 -> [2]; then the trend order 4, 3 (2 already taken).
    assert more.tolist() == [2, 4, 3]
    assert len(set(more.tolist())) == len(more)
    off = CandidateSources(_table(), np.arange(5), 0, 0)
    assert not off.active and off.extra(np.array([0]), np.array([1]), np.array([])).size == 0


def test_extra_columns_map_between_catalogs():
    src = CandidateSources(_table(), np.arange(5), 2, 0)
    ranker_ids = np.array(["a", "b", "c", "d", "e"], dtype=object)
    index_ids = np.array(["e", "d", "c", "b", "x"], dtype=object)  # "a" absent, "x" unknown
    pos_of_col, col_of_pos = catalog_maps(ranker_ids, index_ids)
    assert pos_of_col.tolist() == [4, 3, 2, 1, -1]
    assert col_of_pos.tolist() == [-1, 3, 2, 1, 0]
    # History "a" (position 0): neighbours b (.9), c (.5) -> index columns 3, 2.
    assert extra_columns(
        src, np.array([0]), np.array([4]), np.array([]), pos_of_col, col_of_pos
    ).tolist() == [3, 2]
    # "b" already a towers candidate (column 3): only c remains among the neighbours.
    got = extra_columns(
        src, np.array([0]), np.array([3]), np.array([], np.int64), pos_of_col, col_of_pos
    )
    assert got.tolist() == [2]


def test_trend_popularity_decays_with_age():
    day = 86_400
    inter = pd.DataFrame(
        {"user_id": ["u", "u", "v"], "item_id": ["a", "b", "b"], "timestamp": [0, 7 * day, 7 * day]}
    )
    trend = trend_popularity(inter, np.array(["a", "b", "c"]), half_life_days=7.0)
    np.testing.assert_allclose(trend, [0.25, 1.0, 0.0])
    assert popular_order(trend).tolist() == [1, 0, 2]
