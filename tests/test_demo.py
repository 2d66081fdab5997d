"""`make demo` in miniature: the synthetic fallback through ingest → validate.

The whole demo (MLflow, the retrain DAG, serving) is what tests/dags/test_retrain.py
exercises step by step; here only the demo's own logic is tested.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shortlist import demo
from shortlist.config import Params


def test_demo_falls_back_to_synthetic_data(
    params: Params,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    small = params.with_overrides(
        {"synth.users": 300, "synth.items": 200, "synth.interactions": 6000}
    )
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(small.model_dump()))
    monkeypatch.chdir(tmp_path)

    code = demo.main(
        [
            "--dataset",
            str(tmp_path / "no-such-dataset"),
            "--params",
            str(params_file),
            "--steps",
            "ingest,validate",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "synthetic data" in out
    data_dir = Path(small.data.dir)
    assert (data_dir / "interactions.parquet").is_file()
    assert "validate done" in out and "retrain" not in out
    docs = next(
        line.split()[-1] for line in out.splitlines() if line.strip().startswith("data docs")
    )
    assert Path(docs).is_file()


def test_relative_paths_resolve_against_the_project_dir(tmp_path: Path) -> None:
    p = demo.absolute_paths(
        Params().with_overrides({"bundle.root": "s3://bucket/bundles"}), tmp_path
    )
    assert p.data.dir == str(tmp_path / ".shortlist" / "data")
    assert p.validation.docs_dir == str(tmp_path / ".shortlist" / "data_docs")
    assert p.bundle.root == "s3://bucket/bundles"  # remote roots are left alone


def test_failing_step_stops_the_demo_with_one_line(
    params: Params, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[str] = []

    def boom(d: demo.Demo) -> dict[str, str]:
        from shortlist.errors import ShortlistError

        raise ShortlistError("step two broke")

    steps = [
        demo.Step("one", "first", lambda d: seen.append("one") or {"a": "x"}),
        demo.Step("two", "second", boom),
        demo.Step("three", "third", lambda d: seen.append("three") or {}),
    ]
    state = demo.Demo(params=params, dataset=tmp_path)
    with pytest.raises(Exception, match="step two broke"):
        demo.run(state, steps)
    assert seen == ["one"] and state.outputs == {"a": "x"}
