"""The events API over real bundles: accepted events land in the events log with the
position of the served list; bad events are refused with a reason, counted, and a batch
with one bad event writes nothing; acknowledged events survive kill -9 and a restart."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from shortlist.serving.app import create_app
from shortlist.serving.events import EventLog, ServedLists, log_files_since, read_events


def _ready(client: TestClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("not ready")


def _params(world, tmp_path: Path, **extra):
    overrides = {
        "serving.impressions_dir": str(tmp_path / "impressions"),
        "feedback.events_dir": str(tmp_path / "events"),
        "feedback.events_flush_seconds": 0.0,
    }
    overrides.update(extra)
    return world.params.with_overrides(overrides)


@pytest.fixture
def app_client(world, live_root, tmp_path):
    root, _a, _b = live_root
    params = _params(world, tmp_path)
    app = create_app(params, root=root)
    with TestClient(app) as client:
        _ready(client)
        yield client, app, params, root


def _served(client: TestClient, user: str = "u1", k: int = 5) -> dict:
    resp = client.post("/recommend", json={"user_id": user, "k": k})
    assert resp.status_code == 200, resp.text
    return resp.json()


def _metric(client: TestClient, name: str, label: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{{") and label in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _logged(app, params) -> list[dict]:
    app.state.events.flush()
    table = read_events(params.feedback.events_dir)
    return sorted(table.to_pylist(), key=lambda r: (r["request_id"], r["position"], r["kind"]))


def test_events_are_logged_with_the_served_position(app_client):
    client, app, params, _root = app_client
    body = _served(client)
    rid, items = body["request_id"], [it["item_id"] for it in body["items"]]
    r = client.post("/events", json={"request_id": rid, "item_id": items[2], "kind": "click"})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1 and len(r.json()["event_ids"]) == 1
    batch = [
        {"request_id": rid, "item_id": items[0], "kind": "watch", "seconds": 95.5},
        {"request_id": rid, "item_id": items[1], "kind": "skip"},
        {"request_id": rid, "item_id": items[3], "kind": "dismiss"},
        {"request_id": rid, "item_id": items[4], "kind": "add_to_cart", "weight": 3.0,
         "event_id": "client-1", "occurred_at": 1_700_000_000.5},
    ]  # fmt: skip
    r = client.post("/events/batch", json={"events": batch})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 4 and r.json()["event_ids"][3] == "client-1"

    rows = _logged(app, params)
    got = {(r["item_id"], r["position"], r["kind"], r["value"]) for r in rows}
    assert got == {
        (items[0], 0, "watch", 95.5),
        (items[1], 1, "skip", None),
        (items[2], 2, "click", None),
        (items[3], 3, "dismiss", None),
        (items[4], 4, "add_to_cart", 3.0),
    }
    assert all(r["request_id"] == rid for r in rows)
    assert all(abs(r["served_at"] - body["served_at"]) < 1e-6 for r in rows)
    assert all(r["timestamp"] >= r["served_at"] for r in rows)
    custom = next(r for r in rows if r["kind"] == "add_to_cart")
    assert custom["event_id"] == "client-1" and custom["occurred_at"] == 1_700_000_000.5
    assert _metric(client, "shortlist_events_total", 'kind="watch"') == 1
    assert _metric(client, "shortlist_events_total", 'kind="custom"') == 1
    assert _metric(client, "shortlist_events_total", 'kind="click"') == 1


def test_similar_items_lists_take_events_too(app_client):
    client, app, params, _root = app_client
    body = _served(client)
    item = body["items"][0]["item_id"]
    sim = client.get(f"/similar-items/{item}", params={"k": 3}).json()
    target = sim["items"][1]["item_id"]
    r = client.post(
        "/events", json={"request_id": sim["request_id"], "item_id": target, "kind": "click"}
    )
    assert r.status_code == 200, r.text
    assert [(e["item_id"], e["position"]) for e in _logged(app, params)] == [(target, 1)]


def test_unknown_request_and_foreign_item_are_refused_with_reasons(app_client):
    client, app, params, _root = app_client
    body = _served(client)
    rid = body["request_id"]
    served = {it["item_id"] for it in body["items"]}
    r = client.post("/events", json={"request_id": "f" * 32, "item_id": "i1", "kind": "click"})
    assert r.status_code == 404, r.text
    assert r.json()["reason"] == "unknown_request" and "f" * 32 in r.json()["detail"]
    foreign = next(f"i{j}" for j in range(300) if f"i{j}" not in served)
    r = client.post("/events", json={"request_id": rid, "item_id": foreign, "kind": "click"})
    assert r.status_code == 422, r.text
    assert r.json()["reason"] == "item_not_in_list" and foreign in r.json()["detail"]
    assert _metric(client, "shortlist_events_rejected_total", 'reason="unknown_request"') == 1
    assert _metric(client, "shortlist_events_rejected_total", 'reason="item_not_in_list"') == 1
    assert _logged(app, params) == []


def test_a_batch_with_one_bad_event_writes_nothing(app_client):
    client, app, params, _root = app_client
    body = _served(client)
    rid, items = body["request_id"], [it["item_id"] for it in body["items"]]
    batch = [
        {"request_id": rid, "item_id": items[0], "kind": "click"},
        {"request_id": rid, "item_id": items[1], "kind": "click"},
        {"request_id": "0" * 32, "item_id": items[2], "kind": "click"},
    ]
    r = client.post("/events/batch", json={"events": batch})
    assert r.status_code == 422, r.text
    problems = r.json()["problems"]
    assert [(p["index"], p["reason"]) for p in problems] == [(2, "unknown_request")]
    assert "nothing was written" in r.json()["detail"]
    assert _logged(app, params) == []
    assert _metric(client, "shortlist_events_rejected_total", 'reason="in_refused_batch"') == 2
    # The same batch without the bad event goes through whole.
    r = client.post("/events/batch", json={"events": batch[:2]})
    assert r.status_code == 200 and r.json()["accepted"] == 2
    assert len(_logged(app, params)) == 2


@pytest.mark.parametrize(
    "event, words",
    [
        ({"kind": "watch"}, "seconds"),
        ({"kind": "click", "weight": 2.0}, "neither"),
        ({"kind": "purchase"}, "weight"),
        ({"kind": "watch", "seconds": -1}, "greater than or equal"),
        ({"kind": "Click!"}, "pattern"),
        ({"kind": "click", "extra": 1}, "Extra inputs"),
    ],
)
def test_malformed_events_are_422_before_any_lookup(app_client, event, words):
    client, app, params, _root = app_client
    rid = _served(client)["request_id"]
    r = client.post("/events", json={"request_id": rid, "item_id": "i1", **event})
    assert r.status_code == 422 and words in r.text, r.text
    assert _logged(app, params) == []


def test_non_finite_numbers_and_oversized_batches_are_refused(app_client):
    client, _app, params, _root = app_client
    body = _served(client)
    rid, item = body["request_id"], body["items"][0]["item_id"]
    raw = f'{{"request_id": "{rid}", "item_id": "{item}", "kind": "watch", "seconds": NaN}}'
    r = client.post("/events", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "NaN" in r.text
    n = params.feedback.max_batch_events + 1
    one = {"request_id": rid, "item_id": item, "kind": "click"}
    r = client.post("/events/batch", json={"events": [one] * n})
    assert r.status_code == 422 and "feedback.max_batch_events" in r.text
    # The batch endpoint takes bodies over serving.max_body_bytes, up to its own limit.
    big = [{**one, "event_id": f"e{i:05d}-" + "x" * 90} for i in range(600)]
    assert len(str(big)) > params.serving.max_body_bytes
    r = client.post("/events/batch", json={"events": big})
    assert r.status_code == 200, r.text[:300]
    r = client.post("/events", json={**one, "event_id": "x" * 128, "pad": "y" * 70_000})
    assert r.status_code == 422 and "serving.max_body_bytes" in r.text


def test_events_later_than_the_window_are_refused(world, live_root, tmp_path):
    root, _a, _b = live_root
    params = _params(world, tmp_path, **{"feedback.lateness_seconds": 0.5})
    app = create_app(params, root=root)
    with TestClient(app) as client:
        _ready(client)
        body = _served(client)
        rid, item = body["request_id"], body["items"][0]["item_id"]
        ok = client.post("/events", json={"request_id": rid, "item_id": item, "kind": "click"})
        assert ok.status_code == 200
        time.sleep(0.8)
        r = client.post("/events", json={"request_id": rid, "item_id": item, "kind": "click"})
        assert r.status_code == 422, r.text
        assert r.json()["reason"] == "too_late" and "feedback.lateness_seconds" in r.text
        assert _metric(client, "shortlist_events_rejected_total", 'reason="too_late"') == 1
        assert len(_logged(app, params)) == 1


def test_a_restarted_server_takes_events_for_lists_its_predecessor_served(
    world, live_root, tmp_path
):
    root, _a, _b = live_root
    params = _params(world, tmp_path)
    with TestClient(create_app(params, root=root)) as client:
        _ready(client)
        body = _served(client)
    app = create_app(params, root=root)
    with TestClient(app) as client:
        _ready(client)
        item = body["items"][3]["item_id"]
        r = client.post(
            "/events", json={"request_id": body["request_id"], "item_id": item, "kind": "click"}
        )
        assert r.status_code == 200, r.text
        assert [(e["item_id"], e["position"]) for e in _logged(app, params)] == [(item, 3)]


# -- the log on its own ---------------------------------------------------------------

_CRASHER = """
import os, signal, sys
from shortlist.serving.events import EventLog

log = EventLog(sys.argv[1], rotate_rows=int(sys.argv[2]), flush_seconds=0.0, fsync_ms=5.0)
for b in range(int(sys.argv[3])):
    log.append([{"event_id": f"e{b}-{j}", "request_id": f"r{b}", "item_id": f"i{j}",
                 "position": j, "kind": "click", "value": None, "timestamp": 2.0,
                 "occurred_at": None, "served_at": 1.0} for j in range(3)])
print("appended", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_kill_9_loses_no_acknowledged_event_and_replay_writes_each_once(tmp_path):
    directory = tmp_path / "events"
    proc = subprocess.run(
        [sys.executable, "-c", _CRASHER, str(directory), "7", "20"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "appended" in proc.stdout and proc.returncode == -9, proc.stderr
    log = EventLog(str(directory), rotate_rows=1000)
    assert log.batches_replayed > 0
    log.close()
    rows = read_events(str(directory)).to_pylist()
    ids = sorted(r["event_id"] for r in rows)
    assert ids == sorted(f"e{b}-{j}" for b in range(20) for j in range(3))
    assert not list((directory / ".wal").glob("*.jsonl"))
    EventLog(str(directory), rotate_rows=1000).close()  # a second start replays nothing
    assert len(read_events(str(directory))) == 60


def test_a_torn_last_line_drops_only_that_batch(tmp_path):
    wal = tmp_path / "events" / ".wal"
    wal.mkdir(parents=True)
    good = (
        '{"events":[{"event_id":"a","request_id":"r","item_id":"i","position":0,'
        '"kind":"click","value":null,"timestamp":2.0,"occurred_at":null,"served_at":1.0}]}\n'
    )
    (wal / "events-1-1-abc-000001.jsonl").write_text(good + good.replace('"a"', '"b"')[:60])
    log = EventLog(str(tmp_path / "events"), rotate_rows=10)
    log.close()
    assert log.lines_skipped == 1
    assert [r["event_id"] for r in read_events(str(tmp_path / "events")).to_pylist()] == ["a"]


def test_served_lists_forget_the_oldest_and_read_only_recent_files():
    lists = ServedLists(lateness_seconds=10, max_lists=2)
    for i in range(3):
        lists.add(f"r{i}", 100.0 + i, ["a", "b"])
    assert lists.get("r0") is None and lists.get("r2") == (102.0, ("a", "b"))
    lists.add("r3", 200.0, ["c"])  # 2 x lateness later: the others are past any event
    assert len(lists) == 1
    keys = [
        "impressions-1000000-1-aa-000001.parquet",  # rows before 2000 s: too old
        "impressions-2000000-1-aa-000002.parquet",  # rows from 2000 s to 5000 s
        "impressions-5000000-1-aa-000003.parquet",  # the newest of its log
        "impressions-1500000-2-bb-000001.parquet",  # another log's newest file
        "events-9000000-1-aa-000001.parquet",
    ]
    assert log_files_since(keys, "impressions", horizon=4000.0) == sorted(keys[1:4])


def test_a_write_ahead_failure_refuses_the_batch_and_the_next_one_goes_through(tmp_path):
    from shortlist.serving import events as events_module
    from shortlist.serving import wal as wal_module

    log = EventLog(str(tmp_path / "events"), rotate_rows=1000, fsync_ms=0)
    row = {"event_id": "a", "request_id": "r", "item_id": "i", "position": 0, "kind": "click",
           "value": None, "timestamp": 2.0, "occurred_at": None, "served_at": 1.0}  # fmt: skip
    log.append([row])
    real_write = wal_module.Segment.write

    def torn(self, data: bytes) -> None:  # half a line reaches the file, then the disk is full
        real_write(self, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    wal_module.Segment.write = torn
    try:
        with pytest.raises(events_module.EventLogUnavailable, match="No space"):
            log.append([{**row, "event_id": "b"}])
    finally:
        wal_module.Segment.write = real_write
    log.append([{**row, "event_id": "c"}])
    log.close()
    assert log.wal_errors == 1
    got = sorted(r["event_id"] for r in read_events(str(tmp_path / "events")).to_pylist())
    assert got == ["a", "c"]


def test_the_endpoint_answers_503_when_the_log_cannot_take_events(app_client, monkeypatch):
    from shortlist.serving.events import EventLogUnavailable

    client, app, _params, _root = app_client
    body = _served(client)

    def full(_rows):
        raise EventLogUnavailable("could not write the events write-ahead file: disk full")

    monkeypatch.setattr(app.state.events, "append", full)
    r = client.post(
        "/events",
        json={"request_id": body["request_id"], "item_id": body["items"][0]["item_id"],
              "kind": "click"},
    )  # fmt: skip
    assert r.status_code == 503 and "retry" in r.json()["detail"]
    assert _metric(client, "shortlist_events_rejected_total", 'reason="unavailable"') == 1


def test_events_live_beside_the_impressions_unless_placed():
    from shortlist.config import Params
    from shortlist.serving.events import events_dir

    def where(impressions: str, events: str = "") -> str:
        params = Params().with_overrides(
            {"serving.impressions_dir": impressions, "feedback.events_dir": events}
        )
        return events_dir(params)

    assert where(".shortlist/impressions") == ".shortlist/events"
    assert where("/srv/log/impressions/") == "/srv/log/events"
    assert where("s3://logs/prod/impressions") == "s3://logs/prod/events"
    assert where("s3://logs/impressions") == "s3://logs/events"
    assert where("/srv/imp", "s3://b/ev") == "s3://b/ev"
    with pytest.raises(ValueError, match="feedback.events_dir"):
        where("s3://logs")


def test_served_lists_and_their_events_become_training_data(world, live_root, tmp_path):
    """The loop end to end: lists from the real app, events through /events, the join,
    and the landing into a copy of the dataset through the data contract."""
    import shutil

    import pandas as pd

    from pipelines import feedback

    root, _a, _b = live_root
    data_dir = tmp_path / "data"
    shutil.copytree(world.data_dir, data_dir)
    params = _params(world, tmp_path).with_overrides(
        {
            "data.dir": str(data_dir),
            "project.work_dir": str(tmp_path / "work"),
            "validation.reference_dir": str(tmp_path / "reference"),
            "validation.quarantine_dir": str(tmp_path / "quarantine"),
            "validation.docs_dir": str(tmp_path / "docs"),
        }
    )
    clicked = []
    with TestClient(create_app(params, root=root)) as client:
        _ready(client)
        t0 = time.time()
        for u in range(5):
            body = _served(client, user=f"u{u}", k=4)
            item = body["items"][u % 4]["item_id"]
            r = client.post(
                "/events", json={"request_id": body["request_id"], "item_id": item,
                                 "kind": "watch", "seconds": 60.0 * (u + 1)}
            )  # fmt: skip
            assert r.status_code == 200, r.text
            clicked.append((f"u{u}", item, min(float(u + 1), params.feedback.max_weight)))
    end = float(int(t0) + 3600)
    closed = end + params.feedback.lateness_seconds + 60
    batch = feedback.join(params, start=float(int(t0) - 1), end=end, now=closed)
    assert batch["lists"] == 5 and batch["exposures"] == 20 and batch["engaged"] == 5
    before = len(pd.read_parquet(data_dir / "interactions.parquet"))
    landed = feedback.land(params)
    assert landed["landed"] and landed["interactions_added"] == 5
    inter = pd.read_parquet(data_dir / "interactions.parquet")
    assert len(inter) == before + 5
    fresh = inter[inter["timestamp"] >= int(t0)]
    assert sorted(zip(fresh["user_id"], fresh["item_id"], fresh["weight"], strict=True)) == sorted(
        clicked
    )
