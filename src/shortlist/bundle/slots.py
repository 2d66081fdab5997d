"""Blue-green slots under one artifact root, and the live pointer that picks one.

    ROOT/blue/...   a bundle (manifest.json last)
    ROOT/green/...  the other bundle
    ROOT/live.json  {live_slot, bundle_id, previous_slot, previous_bundle_id, action,
                     rolled_back_from, rolled_back, updated_at}

Building writes only to the idle slot (the one the pointer does not name). Promotion and
rollback rewrite only `live.json`, on explicit bundle ids (a rollback goes back exactly
once, to the bundle live before, and the bundle it left is never made live again), with
a compare-and-swap: locally a locked
check-then-rename, on S3 a PUT conditional on the ETag that was read
(`Store.replace_if_match` / `put_if_absent`), so of two concurrent promoters exactly
one wins and the other gets PromotionRefused. Readers see the old or the new pointer,
never a torn one.
"""

from __future__ import annotations

import json
import time
from typing import Any

from shortlist.bundle.manifest import CANARY, MANIFEST
from shortlist.errors import BundleError, PromotionRefused
from shortlist.storage import PreconditionFailed, Store, open_store

POINTER = "live.json"
BLESSING = "blessing.json"
SLOTS = ("blue", "green")
ROLLED_BACK_KEPT = 50  # bundle ids the pointer remembers as rolled back
ANY = object()  # `expected_live` not given: any live bundle is acceptable


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _age_seconds(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        import calendar

        return round(time.time() - calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")), 1)
    except ValueError:
        return None


class Slots:
    """The two slots and the pointer under `root` (a local directory or s3://bucket/prefix)."""

    def __init__(self, root: str, *, endpoint_url: str | None = None):
        self.root = str(root)
        self.store: Store = open_store(self.root, endpoint_url=endpoint_url)

    # --- reading ----------------------------------------------------------------------
    def read_pointer(self) -> dict[str, Any] | None:
        """The live pointer, or None when nothing was ever promoted."""
        current = self.store.read_versioned(POINTER)
        return json.loads(current.data) if current is not None else None

    def live_slot(self) -> str | None:
        pointer = self.read_pointer()
        return pointer["live_slot"] if pointer else None

    def idle_slot(self) -> str:
        """The slot builds go into: the one the pointer does not name (blue at first)."""
        live = self.live_slot()
        return "green" if live == "blue" else "blue"

    def resolve(self, slot: str) -> str:
        """'idle' / 'live' / 'blue' / 'green' -> a slot name."""
        if slot == "idle":
            return self.idle_slot()
        if slot == "live":
            live = self.live_slot()
            if live is None:
                raise BundleError(f"{self.root}: nothing is live yet (no {POINTER})")
            return live
        if slot not in SLOTS:
            raise BundleError(f"unknown slot {slot!r} (blue, green, idle or live)")
        return slot

    def slot_location(self, slot: str) -> str:
        """Where the slot's bundle lives: a local directory or an s3:// uri."""
        return self.store.join(self.resolve(slot))

    def _read_json(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.store.read_bytes(key))
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            return {"error": f"{key} is not valid JSON"}

    def manifest(self, slot: str) -> dict[str, Any] | None:
        """The slot's manifest (None: empty or half-built slot)."""
        return self._read_json(f"{self.resolve(slot)}/{MANIFEST}")

    def canary(self, slot: str) -> dict[str, Any] | None:
        return self._read_json(f"{self.resolve(slot)}/{CANARY}")

    def blessing(self, slot: str) -> dict[str, Any] | None:
        """The pipeline's blessing record of the slot's bundle (`blessing.json`), or None.

        With canary.json, the platform's own record of whether a bundle may go live:
        written by the pipeline into the bundle store, never taken from registry tags."""
        return self._read_json(f"{self.resolve(slot)}/{BLESSING}")

    def write_blessing(self, slot: str, record: dict[str, Any]) -> None:
        self.store.write_bytes(
            f"{self.resolve(slot)}/{BLESSING}", json.dumps(record, indent=2, default=str).encode()
        )

    def write_canary(self, slot: str, report: dict[str, Any]) -> None:
        self.store.write_bytes(
            f"{self.resolve(slot)}/{CANARY}", json.dumps(report, indent=2, default=str).encode()
        )

    def bundle_id(self, slot: str) -> str | None:
        manifest = self.manifest(slot)
        return manifest.get("bundle_id") if manifest else None

    # --- flipping ---------------------------------------------------------------------
    def _swap(self, new: dict[str, Any], etag: str | None) -> None:
        data = json.dumps(new, indent=2).encode()
        try:
            if etag is None:
                self.store.put_if_absent(POINTER, data)
            else:
                self.store.replace_if_match(POINTER, data, etag)
        except PreconditionFailed as exc:
            raise PromotionRefused(
                f"the live pointer changed while flipping it (another promotion or rollback "
                f"won): {exc}"
            ) from None

    def promote(
        self, expected_bundle_id: str | None = None, *, expected_live: Any = ANY
    ) -> dict[str, Any]:
        """Make the idle slot live. `expected_bundle_id`: refuse unless the idle slot holds
        exactly that bundle (so a promoter never flips to something it did not check);
        `expected_live`: refuse unless the pointer still names that bundle (None: nothing
        live), so a promotion decided on a stale view changes nothing. A bundle that was
        rolled back is never promoted again from its slot: build a new one."""
        current = self.store.read_versioned(POINTER)
        pointer = json.loads(current.data) if current else None
        live = pointer["live_slot"] if pointer else None
        live_bundle = pointer["bundle_id"] if pointer else None
        if expected_live is not ANY and live_bundle != expected_live:
            raise PromotionRefused(
                f"the live bundle is {live_bundle}, not {expected_live}: the pointer moved "
                "since this promotion was decided; nothing changed"
            )
        idle = "green" if live == "blue" else "blue"
        bundle = self.bundle_id(idle)
        if bundle is None:
            raise PromotionRefused(f"the idle slot {idle} holds no complete bundle")
        if expected_bundle_id is not None and bundle != expected_bundle_id:
            raise PromotionRefused(
                f"the idle slot {idle} holds bundle {bundle}, not {expected_bundle_id}"
            )
        rolled_back = list((pointer or {}).get("rolled_back") or [])
        if bundle in rolled_back:
            raise PromotionRefused(
                f"bundle {bundle} in slot {idle} was rolled back: it does not go live again "
                "(build and canary a new bundle instead)"
            )
        new = {
            "live_slot": idle,
            "bundle_id": bundle,
            "previous_slot": live,
            "previous_bundle_id": live_bundle,
            "action": "promote",
            "rolled_back": rolled_back,
            "updated_at": _now(),
        }
        self._swap(new, current.etag if current else None)
        return new

    def rollback(self, expected_live: str | None = None, to: str | None = None) -> dict[str, Any]:
        """Point back at the bundle that was live before the current one, once.

        A compare-and-swap on explicit bundle ids, never a toggle: `expected_live` (when
        given) must still be live, `to` (when given) must be that previous bundle, and its
        slot must still hold it. The bundle rolled back from is recorded and never comes
        back through rollback or promote, and the new pointer names no previous bundle:
        a second rollback, or a concurrent one that lost the race, is refused instead of
        putting the bad bundle back."""
        current = self.store.read_versioned(POINTER)
        if current is None:
            raise PromotionRefused("nothing is live: there is nothing to roll back")
        pointer = json.loads(current.data)
        live_bundle = pointer.get("bundle_id")
        if expected_live is not None and live_bundle != expected_live:
            raise PromotionRefused(
                f"the live bundle is {live_bundle}, not {expected_live}: it was already "
                "rolled back or replaced; nothing changed"
            )
        prev_slot, prev_bundle = pointer.get("previous_slot"), pointer.get("previous_bundle_id")
        if not prev_slot or not prev_bundle:
            why = (
                f" (it was reached by rolling back {pointer.get('rolled_back_from')}; "
                "rolling back again would put that bundle back)"
                if pointer.get("action") == "rollback"
                else ""
            )
            raise PromotionRefused(
                f"the live pointer names no previous bundle to roll back to{why}"
            )
        if to is not None and to != prev_bundle:
            raise PromotionRefused(
                f"can only roll back to the previous bundle {prev_bundle} (slot {prev_slot}), "
                f"not {to}"
            )
        held = self.bundle_id(prev_slot)
        if held != prev_bundle:
            raise PromotionRefused(
                f"slot {prev_slot} now holds {held}, not the previous bundle {prev_bundle} "
                "(it was rebuilt); rollback is impossible"
            )
        rolled_back = [live_bundle, *(pointer.get("rolled_back") or [])][:ROLLED_BACK_KEPT]
        new = {
            "live_slot": prev_slot,
            "bundle_id": prev_bundle,
            "previous_slot": None,
            "previous_bundle_id": None,
            "action": "rollback",
            "rolled_back_from": live_bundle,
            "rolled_back": rolled_back,
            "updated_at": _now(),
        }
        self._swap(new, current.etag)
        return new

    # --- reporting --------------------------------------------------------------------
    def _slot_status(self, slot: str) -> dict[str, Any]:
        manifest = self.manifest(slot) or {}
        canary = self.canary(slot)
        if canary and canary.get("bundle_id") != manifest.get("bundle_id"):
            canary = None  # a report about a bundle the slot no longer holds
        return {
            "slot": slot,
            "location": self.store.join(slot),
            "bundle_id": manifest.get("bundle_id"),
            "created_at": manifest.get("created_at"),
            "age_seconds": _age_seconds(manifest.get("created_at")),
            "item_count": manifest.get("item_count"),
            "index_type": manifest.get("index_type"),
            "canary": None
            if canary is None
            else {
                k: canary.get(k)
                for k in ("passed", "checked_at", "recall@10", "recall@100", "reasons")
            },
        }

    def status(self) -> dict[str, Any]:
        pointer = self.read_pointer()
        live = pointer["live_slot"] if pointer else None
        idle = "green" if live == "blue" else "blue"
        return {
            "root": self.root,
            "pointer": pointer,
            "pointer_age_seconds": _age_seconds(pointer.get("updated_at")) if pointer else None,
            "live": self._slot_status(live) if live else None,
            "idle": self._slot_status(idle),
        }
