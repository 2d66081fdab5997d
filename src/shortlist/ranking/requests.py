"""The ranker's training requests: one per validation user at their first event there,
plus optional later cut points, each labelled with the items the user took from then on.

A request holds no features; `shortlist.ranking.featurize` computes them as of its
timestamp, so everything before the cut is history and everything from it on is a label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from shortlist.data import schema


@dataclass
class LabeledRequest:
    user_id: str
    timestamp: int
    positives: dict[int, float]  # catalog position -> engagement weight
    exclude: np.ndarray  # catalog positions never ranked for this user (already seen)
    cut: int = 0  # which of the user's cut points (0: at their first event of the part)


def make_requests(
    part: pd.DataFrame,
    seen: pd.DataFrame,
    item_index: dict[str, int],
    *,
    engagement: bool = True,
    cut_points: int = 1,
) -> list[LabeledRequest]:
    """Requests of each user of `part`: at their first timestamp there (cut 0), positives =
    their items, and with `cut_points` > 1 up to that many more cuts spread evenly over
    their items in time, each at an item's timestamp with the items from it on as
    positives (what came before is history, through the event log).

    `seen` holds interactions the evaluation protocol excludes from ranking (the user's
    earlier items), so candidates never repeat them.
    """
    p = part.assign(
        u=part[schema.USER_ID].astype(str),
        pos=part[schema.ITEM_ID].astype(str).map(item_index),
    )
    # Only the part's users are asked for: the rest of `seen` (all of train) never is.
    seen = seen[seen[schema.USER_ID].astype(str).isin(p["u"].unique())]
    seen_pos = (
        seen.assign(
            u=seen[schema.USER_ID].astype(str), pos=seen[schema.ITEM_ID].astype(str).map(item_index)
        )
        .dropna(subset=["pos"])
        .groupby("u")["pos"]
        .apply(lambda s: np.unique(s.to_numpy(np.int64)))
        .to_dict()
    )
    out = []
    for u, g in p.groupby("u", sort=True):
        g = g.sort_values(schema.TIMESTAMP, kind="stable")
        times = g[schema.TIMESTAMP].to_numpy(np.int64)
        starts = _cut_starts(times, cut_points)
        g = g.assign(_t=times)
        for cut, start in enumerate(starts):
            t = int(times[start])
            later = g[(g["_t"] >= t)].dropna(subset=["pos"])
            w = (
                later.groupby("pos")[schema.WEIGHT].max()
                if engagement
                else later.groupby("pos").size() * 0 + 1
            )
            if cut and not len(w):
                continue
            out.append(
                LabeledRequest(
                    user_id=str(u),
                    timestamp=t,
                    positives={int(k): float(v) for k, v in w.items()},
                    exclude=seen_pos.get(u, np.array([], np.int64)),
                    cut=cut,
                )
            )
    return out


def _cut_starts(times: np.ndarray, cut_points: int) -> list[int]:
    """Indices (into time-sorted events) where the cuts fall: the first event, then up to
    `cut_points` - 1 more spread evenly, each at a new timestamp (a cut inside a run of
    equal timestamps would put some of them in the history and some in the labels)."""
    starts = [0]
    n = len(times)
    for j in range(1, max(cut_points, 1)):
        k = int(round(j * n / cut_points))
        while 0 < k < n and times[k] == times[k - 1]:
            k += 1
        if k < n and k > starts[-1]:
            starts.append(k)
    return starts
