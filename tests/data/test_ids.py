from __future__ import annotations

import numpy as np
import pandas as pd

from shortlist.data.ids import catalog_positions, codes_of


def test_catalog_positions_match_a_per_row_lookup_with_unknown_and_missing_ids():
    ids = pd.Series(["b", "a", "zz", None, "b", "c"], dtype="str")
    index = {"a": 0, "b": 1, "c": 2}
    got = catalog_positions(ids, index)
    assert got.dtype == np.int64
    assert got.tolist() == [1, 0, -1, -1, 1, 2]


def test_catalog_positions_read_non_string_ids_as_strings():
    assert catalog_positions(pd.Series([3, 1, 3]), {"1": 0, "3": 1}).tolist() == [1, 0, 1]


def test_codes_follow_first_appearance():
    assert codes_of(pd.Series(["u2", "u1", "u2", "u3"], dtype="str")).tolist() == [0, 1, 0, 2]
