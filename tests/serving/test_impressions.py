"""The impressions writer's flush timer: a quiet server still gets its log on disk."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from shortlist.serving.impressions import ImpressionLog


def _append(log: ImpressionLog, request_id: str) -> None:
    log.append(
        request_id=request_id,
        endpoint="/recommend",
        user_id="u1",
        bundle_id="b1",
        item_ids=["i1", "i2", "i3"],
        scores=[3.0, 2.0, 1.0],
        retrieval_scores=[0.3, 0.2, 0.1],
        propensities=[1.0, 1.0, 1.0],
        policy="deterministic",
        strategy="personalized",
    )


def _files(directory: Path) -> list[Path]:
    return sorted(directory.glob("impressions-*.parquet"))


def test_flush_timer_writes_a_partial_buffer_without_rotation_or_close(tmp_path):
    log = ImpressionLog(str(tmp_path), rotate_rows=1000, flush_seconds=0.1)
    try:
        _append(log, "r1")
        deadline = time.monotonic() + 10
        while not _files(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        files = _files(tmp_path)
        assert files, "the flush timer never wrote the buffered rows"
        assert pd.read_parquet(files[0])["item_id"].tolist() == ["i1", "i2", "i3"]
        _append(log, "r2")
    finally:
        log.close()
    rows = pd.concat([pd.read_parquet(f) for f in _files(tmp_path)])
    assert sorted(set(rows["request_id"])) == ["r1", "r2"] and len(rows) == 6  # nothing twice


def test_without_the_timer_rows_wait_for_rotation_or_close(tmp_path):
    log = ImpressionLog(str(tmp_path), rotate_rows=1000, flush_seconds=0.0)
    _append(log, "r1")
    time.sleep(0.3)
    assert _files(tmp_path) == []
    log.close()
    assert len(pd.read_parquet(_files(tmp_path)[0])) == 3
