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
