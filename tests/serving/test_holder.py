"""The bundle holder: swaps on promotion, instant rollback, refuses bad bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from shortlist.bundle.slots import Slots
from shortlist.serving.holder import BundleHolder


def test_promotion_swaps_and_rollback_reuses_the_bundle_in_memory(world, live_root):
    root, a, b = live_root
    swapped = []
    holder = BundleHolder(world.params, root, on_swap=lambda sb: swapped.append(sb.bundle_id))
    assert holder.refresh() and holder.current.bundle_id == a
    old = holder.current
    assert not holder.refresh()  # nothing changed
    Slots(root).promote()
    assert holder.refresh() and holder.current.bundle_id == b
    Slots(root).rollback()
    assert holder.refresh()
    assert holder.current is old  # the same object: a reference swap, no reload
    assert swapped == [a, b, a]


def test_tampered_bundle_is_refused_and_the_live_one_keeps_serving(world, live_root):
    root, a, b = live_root
    refused = []
    holder = BundleHolder(world.params, root, on_refused=lambda bid, exc: refused.append(str(exc)))
    holder.refresh()
    slots = Slots(root)
    idle = Path(slots.slot_location("idle"))
    with open(idle / "index.faiss", "ab") as fh:
        fh.write(b"\0tampered")
    slots.promote()
    assert not holder.refresh()
    assert holder.current.bundle_id == a
    assert refused and "index.faiss" in refused[0] and "sha256" in refused[0]
    assert "index.faiss" in holder.last_error
    assert not holder.refresh() and len(refused) == 1  # not re-hashed on every poll


def test_bundle_naming_another_model_is_refused(world, live_root):
    """Swap in model A's towers (re-hashed, so every checksum passes) under B's manifest."""
    from shortlist.bundle.manifest import sha256_file

    root, a, b = live_root
    holder = BundleHolder(world.params, root)
    holder.refresh()
    slots = Slots(root)
    idle = Path(slots.slot_location("idle"))
    live = Path(slots.slot_location("live"))
    shutil.copyfile(live / "model" / "towers.safetensors", idle / "model" / "towers.safetensors")
    shutil.copyfile(live / "model" / "towers.json", idle / "model" / "towers.json")
    manifest = json.loads((idle / "manifest.json").read_text())
    for name in ("model/towers.safetensors", "model/towers.json"):
        manifest["files"][name] = sha256_file(idle / name)
    (idle / "manifest.json").write_text(json.dumps(manifest))
    slots.promote()
    assert not holder.refresh()
    assert holder.current.bundle_id == a
    assert "model" in holder.last_error


def test_half_built_slot_is_refused(world, live_root):
    root, a, _b = live_root
    holder = BundleHolder(world.params, root)
    holder.refresh()
    slots = Slots(root)
    slots.promote()
    (Path(slots.slot_location("live")) / "manifest.json").unlink()
    # The pointer still names the bundle; its slot no longer proves it: refused.
    assert not holder.refresh()
    assert holder.current.bundle_id == a


def test_a_changed_live_file_is_reported_and_never_served(world, live_root):
    """The holder serves the bytes it verified; a file changed on disk afterwards is
    detected on the next poll, reported, and cleared when the file is put back."""
    root, a, _b = live_root
    holder = BundleHolder(world.params, root)
    holder.refresh()
    live = Path(Slots(root).slot_location("live"))
    before = holder.current.bundle.popularity.copy()
    saved = (live / "popularity.npy").read_bytes()
    (live / "popularity.npy").write_bytes(saved[:-4] + b"\x01\x02\x03\x04")
    assert not holder.refresh()
    assert holder.current.bundle_id == a and "popularity.npy no longer matches" in holder.tampered
    assert holder.last_error == holder.tampered
    assert (holder.current.bundle.popularity == before).all()  # memory holds the verified copy
    (live / "popularity.npy").write_bytes(saved)
    holder.refresh()
    assert holder.tampered is None and holder.last_error is None
