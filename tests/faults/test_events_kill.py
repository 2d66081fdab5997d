"""kill -9 of a real `shortlist serve` process during event traffic loses no acknowledged
event, and the restarted server still takes events for lists its predecessor served.

Four clients post event batches (clicks with their own event ids) against lists the
server served, until enough are acknowledged; the server then gets SIGKILL while
batches are in flight. After a restart every acknowledged event is in the events log,
exactly once; the bound for a machine crash is feedback.events_fsync_ms.
"""

from __future__ import annotations

import os
import re
import signal
import threading

import httpx
import pytest

from shortlist.serving.events import read_events
from tests.servers import stop
from tests.serving.conftest import live_root, start_serve, world  # noqa: F401

BATCHES = 200
CLIENTS = 4
BATCH = 5


def _post(url: str, lists: list[dict], acked: list[str], enough: threading.Event, c: int) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        n = c
        while not enough.is_set():
            n += CLIENTS
            served = lists[n % len(lists)]
            batch = [
                {
                    "request_id": served["request_id"],
                    "item_id": served["items"][j]["item_id"],
                    "kind": "click",
                    "event_id": f"c{c}-n{n}-j{j}",
                }
                for j in range(BATCH)
            ]
            try:
                resp = client.post("/events/batch", json={"events": batch})
            except httpx.HTTPError:
                return  # the server was killed under us
            assert resp.status_code == 200, resp.text
            acked.extend(resp.json()["event_ids"])
            if len(acked) >= BATCHES * BATCH:
                enough.set()


@pytest.mark.slow
def test_kill_9_during_event_traffic_loses_no_acknowledged_event(world, live_root, tmp_path):  # noqa: F811
    root, _a, _b = live_root
    events_dir = tmp_path / "events"
    params = world.params.with_overrides(
        {
            "serving.impressions_dir": str(tmp_path / "impressions"),
            "feedback.events_dir": str(events_dir),
            "feedback.events_rotate_rows": 100_000,  # no rotation: only the WAL has them
            "feedback.events_flush_seconds": 30.0,
            "feedback.events_fsync_ms": 5.0,
        }
    )
    server = start_serve(params, root, tmp_path / "run1")
    lists = [
        httpx.post(server.url + "/recommend", json={"user_id": f"u{u}", "k": 10}).json()
        for u in range(20)
    ]
    acked: list[str] = []
    enough = threading.Event()
    threads = [
        threading.Thread(target=_post, args=(server.url, lists, acked, enough, c))
        for c in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    assert enough.wait(180), f"only {len(acked)} events acknowledged"
    os.kill(server.proc.pid, signal.SIGKILL)  # while other clients' batches are in flight
    server.proc.wait(timeout=30)
    for t in threads:
        t.join(timeout=30)
    assert sorted(events_dir.glob("events-*.parquet")) == []  # only the WAL held them

    restarted = start_serve(params, root, tmp_path / "run2")  # replays both logs first
    try:
        metrics = httpx.get(restarted.url + "/metrics", timeout=10).text
        late = lists[0]
        resp = httpx.post(
            restarted.url + "/events",
            json={
                "request_id": late["request_id"],
                "item_id": late["items"][9]["item_id"],
                "kind": "watch",
                "seconds": 30,
            },
        )
        assert resp.status_code == 200, resp.text  # a list served before the kill
    finally:
        stop(restarted.proc, signal.SIGTERM)
    replayed = re.search(r"^shortlist_events_replayed_batches (\S+)$", metrics, re.M)
    assert replayed and float(replayed.group(1)) >= len(acked) / BATCH

    log = read_events(str(events_dir)).to_pandas()
    lost = set(acked) - set(log["event_id"])
    print(
        f"\nkill -9 during event traffic ({CLIENTS} clients): {len(acked)} events acknowledged, "
        f"{len(lost)} lost, {len(log)} on disk after restart; bound: 0 events for a process "
        f"crash, feedback.events_fsync_ms={params.feedback.events_fsync_ms} ms for a machine crash"
    )
    assert lost == set(), f"{len(lost)} acknowledged events lost"
    counts = log.groupby("event_id").size()
    assert (counts == 1).all()  # replayed once
    assert (log["position"] >= 0).all()
    assert not list((events_dir / ".wal").glob("*.jsonl"))
