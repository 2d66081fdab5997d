"""Id columns as integer positions, without a Python string per row.

Interaction logs hold ids as Arrow-backed strings; `Series.map(dict)` or `.to_numpy()` on
10M rows makes 10M Python string objects (~0.6 GB) just to look each one up. These
helpers encode the column once (`pd.factorize`) and look up each distinct id once.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd


def catalog_positions(ids: pd.Series, index: Mapping[str, int]) -> np.ndarray:
    """Each id's position in `index` (keys are ids as strings); -1 outside it or missing."""
    codes, uniques = pd.factorize(ids.astype(str))
    lookup = np.fromiter((index.get(u, -1) for u in uniques), np.int64, len(uniques))
    return np.r_[lookup, -1][codes]  # code -1 (a missing id) reads the trailing -1


def codes_of(ids: pd.Series) -> np.ndarray:
    """Integer codes of an id column, in order of first appearance (as `pd.factorize`)."""
    return pd.factorize(ids.astype(str))[0]
