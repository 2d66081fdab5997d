"""The train_ranker stage refuses inputs it cannot train from, with an actionable reason."""

from __future__ import annotations

import pytest

from pipelines import train_ranker
from shortlist.errors import ShortlistError


def test_needs_towers_in_model_dir(params, tmp_path):
    with pytest.raises(ShortlistError, match="train-towers"):
        train_ranker.run(params, split_dir=str(tmp_path / "split"), model_dir=str(tmp_path / "m"))


def test_cli_calls_the_stage(monkeypatch, tmp_path, capsys):
    from shortlist import cli

    seen = {}

    def fake_run(params, *, split_dir, model_dir):
        seen.update(split_dir=split_dir, model_dir=model_dir, candidates=params.ranker.candidates)
        return {"ok": True}

    monkeypatch.setattr(train_ranker, "run", fake_run)
    code = cli.main(["train-ranker", "S", "--model", "M", "--set", "ranker.candidates=50"])
    assert code in (0, None)
    assert seen == {"split_dir": "S", "model_dir": "M", "candidates": 50}


@pytest.mark.parametrize("shipped", [True, False])
def test_the_ranker_is_saved_only_when_it_ships(params, tmp_path, monkeypatch, shipped):
    """A ranker that does not beat the retrieval order leaves no ranker files behind (not
    even an earlier run's), so export, the bundle and serving use the retrieval order."""
    import json

    from shortlist.data import split_io
    from shortlist.models import two_tower
    from shortlist.ranking import train as ranking_train
    from shortlist.ranking.ranker import CONFIG, WEIGHTS, Ranker

    model = tmp_path / "m"
    model.mkdir()
    (model / "towers.json").write_text("{}")
    for name in (WEIGHTS, CONFIG):  # an earlier run's ranker
        (model / name).write_text("stale")

    class Saved:
        def save(self, model_dir):
            (tmp_path / "m" / WEIGHTS).write_text("new")
            (tmp_path / "m" / CONFIG).write_text("new")
            return {WEIGHTS: "w", CONFIG: "c"}

    decision = {"shipped": shipped, "reason": "ranker ships" if shipped else "does not ship"}
    summary = {"shipped": shipped, "decision": decision, "history": []}
    validation = __import__("pandas").DataFrame({"user_id": ["u"]})
    split = split_io.Split(validation, validation, validation, validation, validation, {})
    monkeypatch.setattr(split_io, "load_split", lambda uri: split)
    monkeypatch.setattr(two_tower.TwoTowerRetriever, "load", staticmethod(lambda d: object()))
    monkeypatch.setattr(ranking_train, "train_ranker", lambda *a, **k: (Saved(), summary))

    out = train_ranker.run(params, split_dir="S", model_dir=str(model))
    assert out["shipped"] is shipped
    assert Ranker.exists(str(model)) is shipped
    record = json.loads((model / train_ranker.METRICS).read_text())
    assert record["shipped"] is shipped and record["decision"] == decision


@pytest.mark.parametrize("weighting", [True, False])
def test_the_stage_reads_the_landed_exposures_only_when_weighting(
    params, tmp_path, monkeypatch, weighting
):
    """With ranker.propensity_weighting the stage hands <data.dir>/exposures.parquet to the
    trainer (which reweights by it: tests/ranking/test_propensity.py); without, nothing."""
    import pandas as pd

    from shortlist.data import split_io
    from shortlist.models import two_tower
    from shortlist.ranking import train as ranking_train

    data = tmp_path / "work" / "data"
    data.mkdir(parents=True)
    logged = pd.DataFrame(
        {"user_id": ["u1"], "item_id": ["i1"], "propensity": [0.25], "engaged": [True]}
    )
    logged.to_parquet(data / "exposures.parquet")
    model = tmp_path / "m"
    model.mkdir()
    (model / "towers.json").write_text("{}")
    got = {}

    def fake_train(*args, **kwargs):
        got["exposures"] = kwargs.get("exposures")
        decision = {"shipped": False, "reason": "does not ship"}
        return object(), {"shipped": False, "decision": decision, "history": []}

    frame = pd.DataFrame({"user_id": ["u"]})
    split = split_io.Split(frame, frame, frame, frame, frame, {})
    monkeypatch.setattr(split_io, "load_split", lambda uri: split)
    monkeypatch.setattr(two_tower.TwoTowerRetriever, "load", staticmethod(lambda d: object()))
    monkeypatch.setattr(ranking_train, "train_ranker", fake_train)
    p = params.with_overrides({"ranker.propensity_weighting": weighting})
    train_ranker.run(p, split_dir="S", model_dir=str(model))
    if weighting:
        assert got["exposures"].to_dict("list") == logged.to_dict("list")
    else:
        assert got["exposures"] is None
