"""Blue-green slots and the live pointer: builds never touch live, flips are atomic."""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
from pathlib import Path

import pytest

from shortlist.bundle.slots import POINTER, Slots
from shortlist.errors import BundleError, PromotionRefused


def fake_bundle(slots: Slots, slot: str, bundle_id: str) -> None:
    """A slot holding a manifest only: enough for the pointer logic."""
    slots.store.delete_prefix(slot)
    slots.store.write_bytes(f"{slot}/payload.bin", bundle_id.encode())
    slots.store.write_bytes(
        f"{slot}/manifest.json",
        json.dumps({"bundle_id": bundle_id, "created_at": "2026-01-01T00:00:00Z"}).encode(),
    )


def test_first_build_goes_to_blue_and_promote_flips(tmp_path: Path):
    slots = Slots(str(tmp_path / "root"))
    assert slots.read_pointer() is None and slots.idle_slot() == "blue"
    with pytest.raises(PromotionRefused, match="no complete bundle"):
        slots.promote()
    fake_bundle(slots, "blue", "b1")
    p1 = slots.promote(expected_bundle_id="b1")
    assert p1["live_slot"] == "blue" and p1["bundle_id"] == "b1" and p1["previous_slot"] is None
    assert slots.idle_slot() == "green"
    assert slots.slot_location("idle") == str(tmp_path / "root" / "green")

    fake_bundle(slots, slots.idle_slot(), "b2")
    assert slots.bundle_id("live") == "b1"  # building into idle left live untouched
    p2 = slots.promote(expected_bundle_id="b2")
    assert p2 == {**p2, "live_slot": "green", "bundle_id": "b2", "previous_bundle_id": "b1"}

    back = slots.rollback(expected_live="b2", to="b1")
    assert back["live_slot"] == "blue" and back["bundle_id"] == "b1"
    assert back["rolled_back_from"] == "b2" and back["previous_bundle_id"] is None
    # Rollback is not a toggle: a second one would put the bad bundle back.
    with pytest.raises(PromotionRefused, match="reached by rolling back b2"):
        slots.rollback()
    with pytest.raises(PromotionRefused, match="was rolled back"):
        slots.promote()  # nor does the rolled-back bundle come back by promotion
    assert slots.read_pointer()["bundle_id"] == "b1"

    status = slots.status()
    assert status["live"]["bundle_id"] == "b1" and status["idle"]["bundle_id"] == "b2"
    assert status["live"]["age_seconds"] > 0

    fake_bundle(slots, "green", "b3")  # a new build may go live again, and be rolled back
    with pytest.raises(PromotionRefused, match="the live bundle is b1, not b2"):
        slots.promote(expected_bundle_id="b3", expected_live="b2")
    assert slots.promote(expected_bundle_id="b3", expected_live="b1")["bundle_id"] == "b3"
    with pytest.raises(PromotionRefused, match="only roll back to the previous bundle b1"):
        slots.rollback(to="b2")
    with pytest.raises(PromotionRefused, match="live bundle is b3, not b2"):
        slots.rollback(expected_live="b2")
    assert slots.rollback(expected_live="b3")["rolled_back"] == ["b3", "b2"]


def test_promote_refuses_unexpected_bundle_and_half_built_slot(tmp_path: Path):
    slots = Slots(str(tmp_path))
    fake_bundle(slots, "blue", "b1")
    with pytest.raises(PromotionRefused, match="not b9"):
        slots.promote(expected_bundle_id="b9")
    slots.store.delete_prefix("blue/manifest.json")  # files present, manifest missing
    with pytest.raises(PromotionRefused):
        slots.promote()
    assert slots.read_pointer() is None
    with pytest.raises(BundleError):
        slots.resolve("live")


def test_rollback_refused_when_previous_slot_was_rebuilt(tmp_path: Path):
    slots = Slots(str(tmp_path))
    with pytest.raises(PromotionRefused, match="nothing is live"):
        slots.rollback()
    fake_bundle(slots, "blue", "b1")
    slots.promote()
    with pytest.raises(PromotionRefused, match="no previous"):
        slots.rollback()
    fake_bundle(slots, "green", "b2")
    slots.promote()
    fake_bundle(slots, "blue", "b3")  # the rollback target is overwritten by a new build
    with pytest.raises(PromotionRefused, match="rebuilt"):
        slots.rollback()
    assert slots.read_pointer()["bundle_id"] == "b2"


def _promote_in_process(root: str, bundle_id: str, barrier, results) -> None:
    slots = Slots(root)
    barrier.wait()
    try:
        results.put(("won", slots.promote(expected_bundle_id=bundle_id)["bundle_id"]))
    except PromotionRefused as exc:
        results.put(("lost", str(exc)))


def race(slots: Slots, bundle_id: str, n: int, use_processes: bool) -> list[tuple[str, str]]:
    if use_processes:
        ctx = mp.get_context("fork")
        barrier, results = ctx.Barrier(n), ctx.Queue()
        procs = [
            ctx.Process(target=_promote_in_process, args=(slots.root, bundle_id, barrier, results))
            for _ in range(n)
        ]
        for p in procs:
            p.start()
        out = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        return out
    barrier, out, lock = threading.Barrier(n), [], threading.Lock()

    def worker() -> None:
        s = Slots(slots.root)
        barrier.wait()
        try:
            r = ("won", s.promote(expected_bundle_id=bundle_id)["bundle_id"])
        except PromotionRefused as exc:
            r = ("lost", str(exc))
        with lock:
            out.append(r)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return out


@pytest.mark.parametrize("use_processes", [False, True], ids=["threads", "processes"])
def test_concurrent_promoters_exactly_one_wins_local(tmp_path: Path, use_processes: bool):
    slots = Slots(str(tmp_path))
    fake_bundle(slots, "blue", "b1")
    slots.promote()
    fake_bundle(slots, "green", "b2")
    results = race(slots, "b2", 6, use_processes)
    winners = [r for r in results if r[0] == "won"]
    assert len(results) == 6 and len(winners) == 1, results
    pointer = slots.read_pointer()
    assert pointer["live_slot"] == "green" and pointer["previous_bundle_id"] == "b1"
    assert not any(
        p.name.startswith(".live.json.") and p.suffix != ".lock" for p in tmp_path.iterdir()
    )
    assert json.loads((tmp_path / POINTER).read_text())["bundle_id"] == "b2"


def _rollback_in_process(root: str, bundle_id: str, barrier, results) -> None:
    slots = Slots(root)
    barrier.wait()
    try:
        results.put(("won", slots.rollback(expected_live=bundle_id)["bundle_id"]))
    except PromotionRefused as exc:
        results.put(("lost", str(exc)))


@pytest.mark.parametrize("rounds", [10])
def test_concurrent_rollbacks_exactly_one_wins_and_never_toggle(tmp_path: Path, rounds: int):
    """Two people roll back the same bad bundle at once, ten times over: one wins, the
    other is refused, and the bad bundle never comes back."""
    ctx = mp.get_context("fork")
    for i in range(rounds):
        slots = Slots(str(tmp_path / f"r{i}"))
        fake_bundle(slots, "blue", "good")
        slots.promote()
        fake_bundle(slots, "green", "bad")
        slots.promote()
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [
            ctx.Process(target=_rollback_in_process, args=(slots.root, "bad", barrier, results))
            for _ in range(2)
        ]
        for p in procs:
            p.start()
        out = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert sorted(r[0] for r in out) == ["lost", "won"], out
        assert slots.read_pointer()["bundle_id"] == "good"


def stale_reader(slots: Slots) -> Slots:
    """A second promoter that read the pointer before anyone flipped it."""
    other = Slots(slots.root)
    real = other.store
    snapshot = real.read_versioned(POINTER)

    class StaleView:  # the pointer read is frozen; every write goes to the real store
        def __getattr__(self, name):
            return getattr(real, name)

        def read_versioned(self, key):
            return snapshot if key == POINTER else real.read_versioned(key)

    other.store = StaleView()
    return other


def check_compare_and_swap(slots: Slots) -> None:
    fake_bundle(slots, "blue", "b1")
    late = stale_reader(slots)  # read "no pointer yet"
    slots.promote()
    with pytest.raises(PromotionRefused, match="changed while flipping"):
        late.promote()  # put_if_absent loses
    fake_bundle(slots, "green", "b2")
    late = stale_reader(slots)
    slots.promote()
    with pytest.raises(PromotionRefused, match="changed while flipping"):
        late.promote()  # its ETag is stale: the conditional write loses
    assert slots.read_pointer()["bundle_id"] == "b2"
    assert slots.rollback()["bundle_id"] == "b1"


def test_stale_promoter_loses_local(tmp_path: Path):
    check_compare_and_swap(Slots(str(tmp_path)))


@pytest.mark.servers
def test_stale_promoter_loses_s3(s3):
    check_compare_and_swap(Slots(f"s3://{s3.new_bucket('slots')}/bundles"))


@pytest.mark.servers
def test_concurrent_promoters_exactly_one_wins_s3(s3):
    slots = Slots(f"s3://{s3.new_bucket('race')}/bundles")
    fake_bundle(slots, "blue", "b1")
    slots.promote()
    fake_bundle(slots, "green", "b2")
    results = race(slots, "b2", 6, use_processes=False)
    assert [r[0] for r in results].count("won") == 1, results
    assert slots.read_pointer() == {**slots.read_pointer(), "live_slot": "green", "bundle_id": "b2"}
    assert slots.slot_location("live").startswith("s3://")
