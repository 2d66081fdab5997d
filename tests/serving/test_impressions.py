"""The impressions writer's flush timer: a quiet server still gets its log on disk."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

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


# -- durability: the write-ahead file -------------------------------------------------

_CRASHER = """
import os, signal, sys
from shortlist.serving.impressions import ImpressionLog

log = ImpressionLog(sys.argv[1], rotate_rows=int(sys.argv[3]), flush_seconds=0.0,
                    wal_dir=sys.argv[2], fsync_ms=float(sys.argv[4]))
for r in range(int(sys.argv[5])):
    log.append(request_id=f"r{r}", endpoint="/recommend", user_id="u1", bundle_id="b1",
               item_ids=[f"i{j}" for j in range(10)], scores=[1.0] * 10,
               retrieval_scores=None, propensities=[0.5] * 10, policy="p",
               strategy="personalized")
print("appended", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _rows(directory: Path) -> pd.DataFrame:
    files = _files(directory)
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else None


def _crash(tmp_path: Path, lists: int, rotate_rows: int, fsync_ms: float) -> tuple[Path, Path]:
    """A real process appends `lists` served lists and is killed with SIGKILL."""
    import subprocess
    import sys

    out, wal = tmp_path / "imp", tmp_path / "wal"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _CRASHER,
            str(out),
            str(wal),
            str(rotate_rows),
            str(fsync_ms),
            str(lists),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9 and "appended" in proc.stdout, proc.stderr
    return out, wal


@pytest.mark.parametrize("fsync_ms", [5.0, 0.0])
def test_kill_9_loses_no_appended_list_and_restart_replays_it(tmp_path, fsync_ms):
    out, wal = _crash(tmp_path, lists=305, rotate_rows=1000, fsync_ms=fsync_ms)
    # Rotated files may or may not have been written before the kill; the last 50 rows
    # were never rotated, so only the write-ahead file has them.
    before = _rows(out)
    assert (0 if before is None else len(before)) <= 3000
    assert list(wal.glob("*.jsonl")), "the unrotated lists must be in the write-ahead file"

    log = ImpressionLog(str(out), rotate_rows=1000, wal_dir=str(wal))
    log.close()
    rows = _rows(out)
    assert len(rows) == 3050 and rows["request_id"].nunique() == 305  # none lost, none twice
    assert (
        rows.groupby("request_id")["position"].apply(lambda p: sorted(p) == list(range(10))).all()
    )
    assert list(wal.glob("*.jsonl")) == []


def test_kill_9_before_any_rotation_loses_nothing(tmp_path):
    out, wal = _crash(tmp_path, lists=7, rotate_rows=10_000, fsync_ms=5.0)
    assert _files(out) == []
    log = ImpressionLog(str(out), rotate_rows=10_000, wal_dir=str(wal))
    assert log.lists_replayed == 7 and log.rows_replayed == 70
    log.close()
    assert sorted(_rows(out)["request_id"].unique()) == sorted(f"r{r}" for r in range(7))


def test_each_list_is_in_the_write_ahead_file_when_append_returns(tmp_path):
    log = ImpressionLog(str(tmp_path / "imp"), rotate_rows=1000, flush_seconds=0.0)
    try:
        _append(log, "r1")
        segments = list((tmp_path / "imp" / ".wal").glob("*.jsonl"))
        assert len(segments) == 1 and b'"request_id":"r1"' in segments[0].read_bytes()
    finally:
        log.close()
    assert list((tmp_path / "imp" / ".wal").glob("*.jsonl")) == []  # in Parquet now
    assert len(_rows(tmp_path / "imp")) == 3


def test_replay_is_idempotent_and_skips_a_torn_line(tmp_path):
    import json

    out, wal = tmp_path / "imp", tmp_path / "wal"
    wal.mkdir()
    record = {
        "request_id": "r1", "timestamp": 1.0, "endpoint": "/recommend", "user_id": None,
        "bundle_id": "b", "item_ids": ["a", "b"], "scores": [1.0, 0.5], "retrieval_scores": None,
        "propensities": [1.0, 1.0], "policy": "deterministic", "strategy": "popularity",
    }  # fmt: skip
    seg = wal / "impressions-1-1-000001.jsonl"
    seg.write_text(json.dumps(record) + "\n" + '{"request_id": "r2", "timest')
    log = ImpressionLog(str(out), rotate_rows=10, wal_dir=str(wal))
    log.close()
    assert log.lists_replayed == 1 and log.lines_skipped == 1
    assert [f.name for f in _files(out)] == ["impressions-1-1-000001.parquet"]
    # A crash after the Parquet file was written but before the segment was deleted:
    seg.write_text(json.dumps(record) + "\n")
    again = ImpressionLog(str(out), rotate_rows=10, wal_dir=str(wal))
    again.close()
    assert again.lists_replayed == 0 and not seg.exists()
    assert len(_rows(out)) == 2  # not written twice


def test_a_live_logs_segment_is_not_replayed_by_another(tmp_path):
    out, wal = str(tmp_path / "imp"), str(tmp_path / "wal")
    first = ImpressionLog(out, rotate_rows=1000, wal_dir=wal)
    try:
        _append(first, "r1")
        second = ImpressionLog(out, rotate_rows=1000, wal_dir=wal)  # e.g. a second worker
        second.close()
        assert second.lists_replayed == 0 and _files(tmp_path / "imp") == []
    finally:
        first.close()
    assert _rows(tmp_path / "imp")["request_id"].unique().tolist() == ["r1"]


def test_remote_impressions_need_a_local_write_ahead_dir():
    with pytest.raises(ValueError, match="impressions_wal_dir"):
        ImpressionLog("s3://bucket/impressions", rotate_rows=10)


def test_two_logs_of_one_process_never_share_a_file_name(tmp_path):
    logs = [
        ImpressionLog(str(tmp_path), rotate_rows=3, wal_dir=str(tmp_path / "wal")) for _ in "ab"
    ]
    for n, log in enumerate(logs):
        _append(log, f"r{n}")  # 3 rows: one rotation each, in the same millisecond or not
    for log in logs:
        log.close()
    assert len(_files(tmp_path)) == 2 and all(log.wal_errors == 0 for log in logs)
    assert sorted(_rows(tmp_path)["request_id"].unique()) == ["r0", "r1"]
