"""Stage `tune`: a split directory -> a tuning file that later training runs apply.

Runs `shortlist.tuning.tune` within `tuning.budget_minutes` (or the budget given) and
writes the best values to `tuning.path` (or the path given). `train-towers` and
`train-ranker` apply that file while the data keeps the shape it was tuned on.
"""

from __future__ import annotations

import logging
from typing import Any

from shortlist.config import Params

log = logging.getLogger(__name__)


def run(
    params: Params,
    *,
    split_dir: str,
    budget_minutes: float | None = None,
    out_path: str | None = None,
) -> dict[str, Any]:
    """Tune on SPLIT_DIR; returns the tuning document (also written to `out_path`)."""
    from shortlist.data.split_io import load_split
    from shortlist.tuning import tune

    split = load_split(str(split_dir))
    minutes = params.tuning.budget_minutes if budget_minutes is None else budget_minutes
    return tune(
        params,
        split,
        budget_seconds=minutes * 60.0,
        out_path=out_path or params.tuning.path,
        log=log.info,
    )
