"""`shortlist tune`: a budgeted search whose result later runs apply while the data's
shape holds, on a small synthetic split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import split as split_stage
from pipelines import synth
from shortlist.data.split_io import load_split
from shortlist.tuning import TOWER_SPACE, apply_tuning, data_shape, tune


@pytest.fixture(scope="module")
def small_split(tmp_path_factory) -> Path:
    from shortlist.config import Params

    root = tmp_path_factory.mktemp("tune")
    p = Params().with_overrides({"synth.chunk_rows": 5000})
    synth.run(p, users=300, items=200, interactions=12_000, seed=3, out_dir=str(root / "data"))
    split_stage.run(p, data_dir=str(root / "data"), out_dir=str(root / "split"))
    return root / "split"


def test_tune_writes_the_best_values_and_never_loses_to_the_defaults(params, small_split):
    p = params.with_overrides(
        {
            "towers.epochs": 2,
            "towers.threads": 1,
            "ranker.epochs": 1,
            "ranker.threads": 1,
            "tuning.ranker_share": 0.3,
        }
    )
    split = load_split(str(small_split))
    out = Path(p.tuning.path)
    doc = tune(p, split, budget_seconds=20, out_path=str(out), log=lambda msg: None)
    assert json.loads(out.read_text()) == doc
    assert set(doc["best"]) >= set(TOWER_SPACE)
    trials = doc["towers"]["trials"]
    assert sum(trials.values()) >= 1 and trials.get("complete", 0) >= 1
    # The defaults are trial 0, so the best is at least as good as they are.
    assert doc["towers"]["best"] >= doc["towers"]["defaults"]
    assert doc["data_shape"] == data_shape(split.manifest)

    applied, record = apply_tuning(p, split.manifest)
    assert record["applied"] is True
    assert applied.towers.learning_rate == pytest.approx(doc["best"]["towers.learning_rate"])
    assert applied.towers.mixed_negatives == doc["best"]["towers.mixed_negatives"]

    bigger = json.loads(json.dumps(split.manifest))
    bigger["counts"]["users"] *= 4  # the data changed shape: the tuned values no longer apply
    same, record = apply_tuning(p, bigger)
    assert record["applied"] is False and "another shape" in record["reason"]
    assert same.towers.learning_rate == p.towers.learning_rate

    off, record = apply_tuning(p.with_overrides({"tuning.use": False}), split.manifest)
    assert record == {"applied": False, "reason": "tuning.use is false"}


def test_without_a_tuning_file_nothing_is_applied(params, small_split):
    split = load_split(str(small_split))
    same, record = apply_tuning(params, split.manifest)
    assert record["applied"] is False and "no tuning file" in record["reason"]
    assert same == params
