"""Stage: train the ranker beside the towers in MODEL_DIR.

Reads the split (train, validation, items, users) and the two-tower model already in
MODEL_DIR, fits the ranker on validation-period requests over the towers' top-N candidates
(`shortlist.ranking.train`: the towers were fitted on train, so their scores there are
memorised), and writes ranker.safetensors + ranker.json + ranker_metrics.json into
MODEL_DIR. When the towers in MODEL_DIR were refitted on train + validation, their
scores on validation are memorised too, so the ranker trains against the early-stopping
model saved beside them (MODEL_DIR/early_stopped) and serves beside the refitted one.

The ranker is saved only when it beats the retrieval order on held-out validation users
(`shortlist.ranking.decision`); otherwise MODEL_DIR keeps no ranker, so export, the bundle
and serving use the retrieval order, and ranker_metrics.json records why
(`shipped`, `decision`). With `ranker.propensity_weighting` the logged exposures at
<data.dir>/exposures.parquet (landed by the feedback stage) weight the positives that came
from shown items by their clipped inverse propensity. `shortlist train-ranker SPLIT
--model MODEL`, DVC and Airflow call `run`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from shortlist.config import Params
from shortlist.errors import ShortlistError
from shortlist.ranking.ranker import CONFIG, WEIGHTS

METRICS = "ranker_metrics.json"
log = logging.getLogger(__name__)


def run(params: Params, *, split_dir: str, model_dir: str) -> dict[str, Any]:
    """Train, save beside the towers, return the training summary (also in ranker_metrics.json)."""
    from shortlist.data.split_io import load_split
    from shortlist.models.fit import EARLY_STOPPED
    from shortlist.models.two_tower import TwoTowerRetriever
    from shortlist.ranking.train import train_ranker
    from shortlist.tuning import apply_tuning

    if not (Path(model_dir) / "towers.json").exists():
        raise ShortlistError(
            f"no two-tower model in {model_dir}: run `shortlist train-towers` first"
        )
    split = load_split(split_dir)
    params, tuning = apply_tuning(params, split.manifest)
    if split.validation.empty:
        raise ShortlistError(
            "the ranker trains on the validation part (towers memorise train): "
            "split.validation_fraction must be > 0"
        )
    early = Path(model_dir) / EARLY_STOPPED
    trained_against = early if (early / "towers.json").exists() else Path(model_dir)
    towers = TwoTowerRetriever.load(str(trained_against))
    ranker, summary = train_ranker(
        params,
        towers,
        split.train,
        split.validation,
        split.items,
        split.users,
        exposures=_exposures(params) if params.ranker.propensity_weighting else None,
    )
    summary["trained_against_towers"] = EARLY_STOPPED if trained_against == early else "."
    for name in (WEIGHTS, CONFIG):  # a ranker of an earlier run must not be served
        Path(model_dir, name).unlink(missing_ok=True)
    checksums = ranker.save(model_dir) if summary["shipped"] else {}
    log.info("%s", summary["decision"]["reason"])
    out = {
        "model_dir": str(model_dir),
        "snapshot_id": split.snapshot_id,
        "files": checksums,
        "tuning": tuning,
        **{k: v for k, v in summary.items()},
    }
    Path(model_dir, METRICS).write_text(json.dumps(out, indent=2, default=str))
    return {k: v for k, v in out.items() if k != "history"}


def _exposures(params: Params):
    """The logged exposures at <data.dir>/exposures.parquet, or None when there are none."""
    from shortlist.data import schema
    from shortlist.data.io import read_table
    from shortlist.storage import open_store

    store = open_store(params.data.dir, endpoint_url=params.storage.s3_endpoint_url)
    if not store.exists(schema.EXPOSURES):
        log.info(
            "ranker.propensity_weighting: no exposures in %s; weights unchanged", params.data.dir
        )
        return None
    return read_table(store, schema.EXPOSURES)
