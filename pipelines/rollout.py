"""Stages: promote the idle slot, roll back, and report the slots' status.

Promotion flips the live pointer only when the idle slot's own canary report passed for
the bundle it holds now; the flip is one conditional write, so a lost race or a changed
slot is refused (PromotionRefused) and production stays exactly as it was. Rollback
flips back to the previous bundle (still in the other slot) without any rebuild.
"""

from __future__ import annotations

import time
from typing import Any

from shortlist.config import Params


def _slots(params: Params, root: str | None):
    from shortlist.bundle.slots import Slots

    return Slots(root or params.bundle.root, endpoint_url=params.storage.s3_endpoint_url)


def promote(params: Params, *, root: str | None = None) -> dict[str, Any]:
    from shortlist.errors import PromotionRefused

    slots = _slots(params, root)
    idle = slots.idle_slot()
    bundle_id = slots.bundle_id(idle)
    if bundle_id is None:
        raise PromotionRefused(f"the idle slot {idle} holds no complete bundle")
    canary = slots.canary(idle)
    if canary is None or canary.get("bundle_id") != bundle_id:
        raise PromotionRefused(
            f"bundle {bundle_id} in slot {idle} has no canary report: run canary"
        )
    if not canary.get("passed"):
        reasons = "; ".join(canary.get("reasons") or []) or "failed"
        raise PromotionRefused(f"bundle {bundle_id} failed its canary: {reasons}")
    t0 = time.perf_counter()
    pointer = slots.promote(expected_bundle_id=bundle_id)
    return {**pointer, "seconds": round(time.perf_counter() - t0, 4)}


def rollback(params: Params, *, root: str | None = None) -> dict[str, Any]:
    slots = _slots(params, root)
    t0 = time.perf_counter()
    pointer = slots.rollback()
    return {**pointer, "seconds": round(time.perf_counter() - t0, 4)}


def status(params: Params, *, root: str | None = None) -> dict[str, Any]:
    return _slots(params, root).status()


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def format_status(status: dict[str, Any]) -> str:
    """Human-readable status: one line per slot plus the pointer."""
    lines = [f"root: {status['root']}"]
    pointer = status.get("pointer")
    if pointer:
        lines.append(
            f"pointer: live={pointer['live_slot']} bundle={pointer['bundle_id']} "
            f"previous={pointer.get('previous_bundle_id') or '-'} "
            f"updated {pointer['updated_at']} ({_age(status.get('pointer_age_seconds'))} ago)"
        )
    else:
        lines.append("pointer: none (nothing promoted yet)")
    for role in ("live", "idle"):
        s = status.get(role)
        if not s:
            lines.append(f"{role}: -")
            continue
        canary = s.get("canary")
        if canary is None:
            verdict = "no canary"
        else:
            verdict = (
                f"canary {'PASSED' if canary.get('passed') else 'FAILED'} "
                f"(recall@10 {canary.get('recall@10')}, @100 {canary.get('recall@100')}, "
                f"at {canary.get('checked_at')})"
            )
        lines.append(
            f"{role}: slot={s['slot']} bundle={s.get('bundle_id') or '(empty)'} "
            f"age={_age(s.get('age_seconds'))} items={s.get('item_count') or '-'} "
            f"index={s.get('index_type') or '-'} {verdict}"
        )
    return "\n".join(lines)
