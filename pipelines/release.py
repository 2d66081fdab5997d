"""Release stages: register the challenger, wait for approval, promote, roll back.

These are the steps of the retrain DAG after the canary. They tie the serving pointer
(blue/green slots) to the MLflow registry aliases: ``champion`` names the live bundle's
version, and the pointer only ever flips to a bundle whose version is blessed, passed
its canary, and was approved (a person moved ``champion`` in the MLflow UI, or
``promotion.auto_approve``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shortlist import registry
from shortlist.config import Params
from shortlist.errors import PromotionRefused


def _slots(params: Params, root: str | None):
    from shortlist.bundle.slots import Slots

    return Slots(root or params.bundle.root)


def register_challenger(
    params: Params,
    *,
    evaluation: dict[str, Any],
    root: str | None = None,
) -> dict[str, Any]:
    """Register the idle slot's bundle as a model version; `challenger` if it may go live.

    `evaluation` is the evaluate stage's result (metrics, blessing, out_dir). Idempotent:
    the version is found by bundle id on a retry.
    """
    from shortlist.bundle.bundle import local_copy

    slots = _slots(params, root)
    idle = slots.idle_slot()
    with local_copy(slots.slot_location(idle)) as bundle_dir:
        manifest = json.loads((Path(bundle_dir) / "manifest.json").read_text())
        canary_file = Path(bundle_dir) / "canary.json"
        canary = json.loads(canary_file.read_text()) if canary_file.exists() else {"passed": False}
        version = registry.register_bundle(
            params,
            bundle_dir=bundle_dir,
            manifest=manifest,
            blessing=evaluation["blessing"],
            canary=canary,
            metrics=evaluation["challenger_metrics"],
            comparison_dir=evaluation.get("out_dir"),
            slot=idle,
        )
    return {
        "version": version,
        "bundle_id": manifest["bundle_id"],
        "blessed": bool(evaluation["blessing"].get("blessed")),
        "canary_passed": bool(canary.get("passed")),
        "slot": idle,
    }


def await_approval(params: Params, *, version: str, timeout_s: float | None = None) -> bool:
    """True once `champion` points at `version`; False when the approval window closed."""
    return registry.await_approval(params, version, timeout_s=timeout_s)


def promote_approved(params: Params, *, version: str, root: str | None = None) -> dict[str, Any]:
    """Flip the live pointer to the idle slot, only for the approved, promotable version."""
    from pipelines import rollout

    registry.check_promotable(params, version)
    champion = registry.alias_version(params, registry.CHAMPION)
    if champion is None or str(champion.version) != str(version):
        raise PromotionRefused(f"`champion` does not point at version {version}: not approved")
    slots = _slots(params, root)
    idle_bundle = slots.status().get("idle", {}).get("bundle_id")
    wanted = (champion.tags or {}).get(registry.TAG_BUNDLE)
    if idle_bundle != wanted:
        raise PromotionRefused(
            f"the idle slot holds bundle {idle_bundle}, but version {version} is bundle {wanted}"
        )
    return rollout.promote(params, root=root)


def rollback_live(params: Params, *, root: str | None = None, reason: str = "") -> dict[str, Any]:
    """Flip back to the previous bundle and move `champion` back to its version."""
    from pipelines import rollout

    result = rollout.rollback(params, root=root)
    previous = registry.find_version(params, result.get("bundle_id", ""))
    if previous is not None:
        registry.set_champion(params, str(previous.version), approved_by=f"rollback: {reason}")
    return {**result, "reason": reason}
