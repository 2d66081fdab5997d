"""Stage: evaluate the challenger against the live champion and the baselines, then bless.

The champion is the model inside the live bundle (if any), evaluated by the evaluate
stage's harness on the same split as the challenger, so the comparison is like for
like; the evaluate stage writes blessing.json (BLESSED / NOT_BLESSED with every reason).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from shortlist.config import Params


@contextlib.contextmanager
def _live_model_dir(params: Params, root: str | None):
    """The live bundle's model directory (local), or None when nothing is live."""
    from shortlist.bundle.bundle import MODEL, local_copy
    from shortlist.bundle.slots import Slots

    slots = Slots(root or params.bundle.root, endpoint_url=params.storage.s3_endpoint_url)
    live = slots.live_slot()
    if live is None:
        yield None
        return
    with local_copy(slots.slot_location(live)) as bundle_dir:
        yield str(Path(bundle_dir) / MODEL)


def run(
    params: Params,
    *,
    model_dir: str,
    split_dir: str,
    root: str | None = None,
    out_dir: str | None = None,
) -> dict[str, Any]:
    """Returns {'blessing', 'challenger_metrics', 'champion_metrics', 'out_dir', 'table'}."""
    from pipelines import evaluate

    with _live_model_dir(params, root) as champion_dir:
        result = evaluate.run(
            params,
            model_dir=model_dir,
            split_dir=split_dir,
            out_dir=out_dir,
            champion_dir=champion_dir,
        )
    metrics = result["metrics"]
    return {
        "blessing": result["blessing"],
        "challenger_metrics": metrics["challenger"],
        "champion_metrics": metrics["champion"],
        "out_dir": result["out_dir"],
        "table": result["table"],
    }
