"""benchmarks/pipeline_scale.py end to end at a tiny size: every stage of the retrain runs
through the CLI in its own process and its wall time and peak memory are recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = [
    "synth",
    "validate",
    "split",
    "train_towers",
    "train_ranker",
    "evaluate",
    "build_bundle",
    "canary",
]


def _run(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "result.json"
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "pipeline_scale.py"),
        *("--interactions", "6000", "--items", "300", "--users", "300"),
        *("--set", "towers.epochs=1", "--set", "ranker.epochs=1"),
        *("--set", "towers.threads=1", "--set", "ranker.threads=1"),
        *("--work", str(tmp_path / "work"), "--out", str(out), "--keep", *extra),
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_every_stage_runs_and_is_measured_then_one_reruns(tmp_path: Path) -> None:
    result = _run(tmp_path)
    assert list(result["stages"]) == STAGES
    for name, stage in result["stages"].items():
        assert stage["exit_code"] == 0, (name, stage)
        assert stage["wall_s"] > 0 and 0.05 < stage["peak_rss_gib"] < 8, (name, stage)
    summary = result["summary"]
    assert summary["completed"] and summary["stopped_at"] is None
    assert summary["peak_rss_gib"] == max(s["peak_rss_gib"] for s in result["stages"].values())
    assert result["provenance"]["commit"] and "towers.epochs=1" in result["overrides"]
    assert (tmp_path / "work" / "bundles").is_dir()

    again = _run(tmp_path, "--only", "train_towers")
    assert again["reruns"][0]["stages"] == ["train_towers"] and list(again["stages"]) == STAGES
    assert again["stages"]["synth"] == result["stages"]["synth"]  # kept from the first run
    assert again["stages"]["train_towers"]["commit"] == again["reruns"][0]["provenance"]["commit"]
    assert again["summary"]["completed"]
