"""Inverse-propensity weights for the ranker's positives, from the logged exposures.

A deployed ranker learns from what it chose to show: an item the greedy list shows every
time collects engagements in proportion to its exposure, an item that was shown only by
an exploration slot (propensity 0.05, say) collects few even when users like it as much.
Weighting each engagement by 1 / propensity of the exposure it came from undoes that
selection in expectation (Joachims, Swaminathan and Schnabel 2017). The weight is
clipped at `clip` because a rare exposure would otherwise let one engagement dominate the
loss (the usual bias-for-variance trade).

The exposures table (`shortlist.data.schema.EXPOSURES_SCHEMA`, written by the feedback
join) names every shown item with its propensity and whether it was engaged. A positive
(user, item) of the ranker's labels is reweighted when that user engaged that item in a
logged exposure; when several such exposures exist, the largest propensity is used (the
most likely way the item reached the user, and the smallest weight). Interactions with
no engaged exposure (organic history, imported data) keep their weight.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from shortlist.data import schema


def propensity_factors(exposures: pd.DataFrame, clip: float) -> pd.Series:
    """min(1 / propensity, clip) per engaged (user_id, item_id) of `exposures` (the largest
    propensity when one pair was engaged more than once); anonymous rows are left out."""
    if clip < 1.0:
        raise ValueError(f"the propensity clip must be at least 1, got {clip}")
    engaged = exposures[exposures["engaged"].astype(bool) & exposures[schema.USER_ID].notna()]
    p = pd.to_numeric(engaged["propensity"], errors="coerce")
    ok = np.isfinite(p) & (p > 0) & (p <= 1)
    engaged = engaged[ok]
    best = (
        engaged.assign(
            **{schema.USER_ID: engaged[schema.USER_ID].astype(str)},
            **{schema.ITEM_ID: engaged[schema.ITEM_ID].astype(str)},
        )
        .groupby([schema.USER_ID, schema.ITEM_ID])["propensity"]
        .max()
    )
    return np.minimum(1.0 / best.astype(np.float64), clip).rename("factor")


def reweight(
    part: pd.DataFrame, exposures: pd.DataFrame | None, clip: float
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """`part` (interactions) with the weight of every row that came from an engaged
    exposure multiplied by its clipped inverse propensity; and what was done (rows
    reweighted, clipped, the mean factor over them)."""
    if exposures is None or exposures.empty or part.empty:
        return part, {"reweighted": 0, "clipped": 0, "mean_factor": 1.0}
    factors = propensity_factors(exposures, clip)
    keys = pd.MultiIndex.from_arrays(
        [part[schema.USER_ID].astype(str), part[schema.ITEM_ID].astype(str)]
    )
    f = factors.reindex(keys).to_numpy(np.float64)
    hit = np.isfinite(f)
    out = part.copy()
    w = out[schema.WEIGHT].to_numpy(np.float64)
    out[schema.WEIGHT] = np.where(hit, w * np.where(hit, f, 1.0), w)
    return out, {
        "reweighted": int(hit.sum()),
        "clipped": int((f[hit] >= clip).sum()),
        "mean_factor": float(f[hit].mean()) if hit.any() else 1.0,
    }
