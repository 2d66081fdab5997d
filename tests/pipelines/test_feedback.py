"""The feedback join over real impressions and events logs, and landing its batches into
a dataset through the data contract."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from pipelines import feedback
from shortlist.config import load_params
from shortlist.data import schema
from shortlist.data.io import read_snapshot, write_dataset
from shortlist.errors import DataValidationError, ShortlistError
from shortlist.serving.events import EventLog
from shortlist.serving.impressions import ImpressionLog
from tests.serving.conftest import REPO, tiny_tables


@pytest.fixture
def params(tmp_path: Path):
    return load_params(REPO / "params.yaml").with_overrides(
        {
            "project.work_dir": str(tmp_path / "work"),
            "data.dir": str(tmp_path / "data"),
            "serving.impressions_dir": str(tmp_path / "impressions"),
            "feedback.events_dir": str(tmp_path / "events"),
            "feedback.batches_dir": str(tmp_path / "feedback"),
            "validation.reference_dir": str(tmp_path / "reference"),
            "validation.quarantine_dir": str(tmp_path / "quarantine"),
            "validation.docs_dir": str(tmp_path / "docs"),
        }
    )


def _serve(log: ImpressionLog, request_id: str, user: str | None, items: list[str]) -> None:
    log.append(
        request_id=request_id,
        endpoint="/recommend",
        user_id=user,
        bundle_id="b1",
        item_ids=items,
        scores=[1.0] * len(items),
        retrieval_scores=None,
        propensities=[0.5 + 0.1 * p for p in range(len(items))],
        policy="plackett_luce",
        strategy="personalized",
    )


def _event(event_id, request_id, item, position, kind, value=None, served_at=0.0):
    return {
        "event_id": event_id,
        "request_id": request_id,
        "item_id": item,
        "position": position,
        "kind": kind,
        "value": value,
        "timestamp": served_at + 5.0,
        "occurred_at": None,
        "served_at": served_at,
    }


@pytest.fixture
def traffic(params):
    """Three lists served now (one anonymous) and their events, in real log files."""
    imp = ImpressionLog(params.serving.impressions_dir, rotate_rows=1000)
    t0 = time.time()
    _serve(imp, "r1", "u1", ["i1", "i2", "i3", "i4"])
    _serve(imp, "r2", "u2", ["i5", "i6"])
    _serve(imp, "r3", None, ["i7", "i8"])
    imp.close()
    ev = EventLog(params.feedback.events_dir, rotate_rows=1000)
    ev.append(
        [
            _event("e1", "r1", "i2", 1, "click", served_at=t0),
            _event("e2", "r1", "i3", 2, "watch", 120.0, served_at=t0),  # 120 s / 60 = 2.0
            _event("e3", "r1", "i4", 3, "skip", served_at=t0),
            _event("e4", "r1", "i1", 0, "dismiss", served_at=t0),
            _event("e5", "r2", "i5", 0, "purchase", 10.0, served_at=t0),  # capped at 5
            _event("e6", "r3", "i8", 1, "click", served_at=t0),  # anonymous
            _event("e7", "r-lost", "i1", 0, "click", served_at=t0),  # no impression
        ]
    )
    ev.append([_event("e1", "r1", "i2", 1, "click", served_at=t0)])  # a client's retry
    ev.close()
    start = float(int(t0) - 10)
    return start, start + 3600.0


def _closed(params, end: float) -> float:
    """A clock at which the window ending at `end` is closed."""
    return end + params.feedback.lateness_seconds + 60.0


def test_join_weights_engagement_and_keeps_every_exposure(params, traffic):
    start, end = traffic
    result = feedback.join(params, start=start, end=end, now=_closed(params, end))
    assert result["status"] == "written"
    path = Path(result["path"])
    inter = pd.read_parquet(path / schema.INTERACTIONS)
    got = {(r.user_id, r.item_id, r.weight) for r in inter.itertuples()}
    assert got == {("u1", "i2", 1.0), ("u1", "i3", 2.0), ("u2", "i5", 5.0)}
    exp = pd.read_parquet(path / schema.EXPOSURES).set_index(["request_id", "position"])
    assert len(exp) == 8 and result["exposures"] == 8 and result["lists"] == 3
    assert exp.loc[("r1", 0), "dismissed"] and not exp.loc[("r1", 0), "engaged"]
    assert exp.loc[("r1", 3), "skipped"] and exp.loc[("r1", 3), "weight"] == 0
    assert exp.loc[("r1", 2), "propensity"] == pytest.approx(0.7)
    assert exp.loc[("r3", 1), "engaged"] and pd.isna(exp.loc[("r3", 1), "user_id"])
    assert result["anonymous_engaged"] == 1 and result["events"] == 6  # the retry dropped
    assert result["events_without_impression"] == 1
    assert exp["policy"].unique().tolist() == ["plackett_luce"]


def test_join_is_idempotent_and_deterministic(params, traffic):
    start, end = traffic
    now = _closed(params, end)
    first = feedback.join(params, start=start, end=end, now=now)
    path = Path(first["path"])
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    again = feedback.join(params, start=start, end=end, now=now)
    assert again["status"] == "unchanged" and again["snapshot_id"] == first["snapshot_id"]
    for p in path.iterdir():
        p.unlink()
    rebuilt = feedback.join(params, start=start, end=end, now=now + 999)
    assert rebuilt["status"] == "written"
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before


def test_an_open_window_is_refused_and_other_windows_are_empty(params, traffic):
    start, end = traffic
    with pytest.raises(ShortlistError, match="still open"):
        feedback.join(params, start=start, end=end, now=end + 10)
    earlier = feedback.join(params, start=start - 3600, end=start, now=_closed(params, end))
    assert earlier["exposures"] == 0 and earlier["rows"][schema.INTERACTIONS] == 0


def test_latest_window_is_closed_and_on_the_grid(params):
    now = 1_700_000_000.0
    start, end = feedback.latest_window(params, now)
    assert end - start == params.feedback.window_seconds and end % 3600 == 0
    assert end <= feedback.closed_before(params, now) < end + 3600


def _dataset(params) -> None:
    interactions, items, users = tiny_tables(n_users=40, n_items=60, n_interactions=800)
    write_dataset(params.data.dir, interactions, items, users, source="csv",
                  extra={"timestamps": "real"})  # fmt: skip


def test_land_merges_batches_through_the_gate_and_twice_adds_nothing(params, traffic):
    start, end = traffic
    _dataset(params)
    before = pd.read_parquet(Path(params.data.dir) / schema.INTERACTIONS)
    feedback.join(params, start=start, end=end, now=_closed(params, end))
    # u1, u2 are known users (u0..u39); an interaction with an unknown item is dropped:
    # i1..i8 all exist in the 60-item catalog, so everything lands.
    landed = feedback.land(params)
    assert landed["landed"] and landed["interactions_added"] == 3
    after = pd.read_parquet(Path(params.data.dir) / schema.INTERACTIONS)
    assert len(after) == len(before) + 3
    snap = read_snapshot(params.data.dir)
    assert snap["snapshot_id"] == landed["snapshot_id"] and snap["timestamps"] == "real"
    assert snap["feedback"]["interactions_added"] == 3
    assert len(pd.read_parquet(Path(params.data.dir) / schema.EXPOSURES)) == 8
    assert (Path(params.validation.reference_dir) / schema.SNAPSHOT).exists()
    again = feedback.land(params)
    assert not again["landed"] and again["reason"] == "nothing new"


def test_a_merge_that_fails_the_contract_is_quarantined_and_data_dir_kept(params, traffic):
    start, end = traffic
    _dataset(params)
    snapshot = read_snapshot(params.data.dir)
    feedback.join(params, start=start, end=end, now=_closed(params, end))
    strict = params.with_overrides({"validation.max_weight": 4.0})  # the purchase weighs 5
    with pytest.raises(DataValidationError, match="quarantined"):
        feedback.land(strict)
    assert read_snapshot(params.data.dir) == snapshot
    assert any(Path(params.validation.quarantine_dir).iterdir())


def test_run_joins_the_latest_closed_window_then_catches_up_missed_ones(params, traffic):
    _start, end = traffic
    now = end + params.feedback.lateness_seconds + 3600
    first = feedback.run(params, now=now)
    assert [b["status"] for b in first["batches"]] == ["written"]
    assert "feedback " in feedback.summary_line(first)
    newest = feedback.latest_window(params, now)[1]
    again = feedback.run(params, now=now)  # nothing new closed: the latest, unchanged
    assert [b["status"] for b in again["batches"]] == ["unchanged"]
    later = feedback.run(params, now=now + 3 * 3600)  # three runs were missed
    windows = [(b["window"]["start"], b["window"]["end"]) for b in later["batches"]]
    assert windows == [
        (feedback._iso(newest + i * 3600), feedback._iso(newest + (i + 1) * 3600)) for i in range(3)
    ]
    capped = params.with_overrides({"feedback.max_catch_up_windows": 2})
    last = feedback.run(capped, now=now + 13 * 3600)  # ten missed: the newest two
    assert [b["window"]["end"] for b in last["batches"]] == [
        feedback._iso(newest + 12 * 3600),
        feedback._iso(newest + 13 * 3600),
    ]


def test_land_adds_new_users_and_drops_items_the_catalog_lacks(params):
    _dataset(params)
    imp = ImpressionLog(params.serving.impressions_dir, rotate_rows=1000)
    t0 = time.time()
    _serve(imp, "r9", "newcomer", ["i3", "gone"])
    imp.close()
    ev = EventLog(params.feedback.events_dir, rotate_rows=1000)
    ev.append([_event("a", "r9", "i3", 0, "click", served_at=t0),
               _event("b", "r9", "gone", 1, "click", served_at=t0)])  # fmt: skip
    ev.close()
    start = float(int(t0) - 10)
    feedback.join(params, start=start, end=start + 3600, now=_closed(params, start + 3600))
    landed = feedback.land(params)
    assert landed["users_added"] == 1 and landed["unknown_item_interactions_dropped"] == 1
    users = pd.read_parquet(Path(params.data.dir) / schema.USERS)
    assert "newcomer" in set(users["user_id"])
    inter = pd.read_parquet(Path(params.data.dir) / schema.INTERACTIONS)
    assert set(inter.loc[inter["user_id"] == "newcomer", "item_id"]) == {"i3"}


def test_the_cli_joins_a_window_and_refuses_an_open_one(params, traffic, capsys):
    from shortlist.cli import main

    start, end = traffic
    sets = []
    for key in ("serving.impressions_dir", "feedback.events_dir", "feedback.batches_dir"):
        section, name = key.split(".")
        sets += ["--set", f"{key}={getattr(getattr(params, section), name)}"]
    base = ["feedback", "--params", str(REPO / "params.yaml"), *sets]
    end_iso = feedback._iso(end)
    assert main([*base, "--end", end_iso]) == 1  # the window closes an hour after its end
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "still open" in err
    assert main([*base, "--end", end_iso, "--start", str(start), "--force", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"status": "written"' in out and '"exposures": 8' in out
    assert feedback.parse_time("2024-01-02T00:00:00Z") == 1704153600.0
    with pytest.raises(ShortlistError, match="ISO 8601"):
        feedback.parse_time("yesterday")


def test_shown_items_without_a_usable_propensity_are_left_out_and_counted(params):
    imp = ImpressionLog(params.serving.impressions_dir, rotate_rows=1000)
    t0 = time.time()
    imp.append(request_id="r1", endpoint="/recommend", user_id="u1", bundle_id="b1",
               item_ids=["i1", "i2", "i3"], scores=[1.0] * 3, retrieval_scores=None,
               propensities=[0.0, 1.5, 0.5], policy="p", strategy="personalized")  # fmt: skip
    imp.close()
    start = float(int(t0) - 10)
    result = feedback.join(params, start=start, end=start + 3600, now=_closed(params, start + 3600))
    assert result["exposures"] == 1 and result["invalid_propensity"] == 2
