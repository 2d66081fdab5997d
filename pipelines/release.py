"""Release stages: register the challenger, wait for approval, promote, roll back.

These are the steps of the retrain DAG after the canary. They tie the serving pointer
(blue/green slots) to the MLflow registry aliases: ``champion`` is the desired state and
names the live bundle's version; the pointer only ever flips to a bundle whose version
is blessed, passed its canary, and was approved (a person moved ``champion`` in the
MLflow UI, or ``promotion.auto_approve``). `reconcile` carries out a ``champion`` moved
back to the previously live bundle as a rollback and reports any other disagreement.
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
        # The platform's own record, beside the canary's: promotion checks these, not tags.
        slots.write_blessing(idle, {"bundle_id": manifest["bundle_id"], **evaluation["blessing"]})
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
    idle = slots.idle_slot()
    idle_bundle = slots.bundle_id(idle)
    wanted = (champion.tags or {}).get(registry.TAG_BUNDLE)
    if idle_bundle != wanted:
        raise PromotionRefused(
            f"the idle slot holds bundle {idle_bundle}, but version {version} is bundle {wanted}"
        )
    check_platform_record(slots, idle, wanted)
    return rollout.promote(params, root=root, bundle_id=wanted)


def check_platform_record(slots: Any, slot: str, bundle_id: str) -> None:
    """Refuse unless the pipeline's own records in the bundle store (blessing.json and
    canary.json in the slot, about this very bundle) say blessed and passed.

    Registry tags are a view anyone with EDIT on the model could set by hand; these
    records are written only by the pipeline, next to the checksummed bundle."""
    blessing = slots.blessing(slot) or {}
    if blessing.get("bundle_id") != bundle_id or blessing.get("blessed") is not True:
        raise PromotionRefused(
            f"bundle {bundle_id} is not blessed in the platform's own record "
            f"({slot}/blessing.json), whatever the registry's tags say: it does not go live"
        )
    canary = slots.canary(slot) or {}
    if canary.get("bundle_id") != bundle_id or canary.get("passed") is not True:
        raise PromotionRefused(
            f"bundle {bundle_id} has no passed canary in the platform's own record "
            f"({slot}/canary.json): it does not go live"
        )


def rollback_live(
    params: Params,
    *,
    root: str | None = None,
    reason: str = "",
    expected_live: str | None = None,
) -> dict[str, Any]:
    """Flip back to the previous bundle and move `champion` back to its version.

    `expected_live`: the bundle the caller measured; the rollback happens only while that
    bundle is still live (PromotionRefused otherwise), so a check that took a minute never
    undoes a rollback or promotion a person made meanwhile."""
    from pipelines import rollout

    result = rollout.rollback(params, root=root, expected_live=expected_live)
    previous = registry.find_version(params, result.get("bundle_id", ""))
    if previous is not None:
        registry.set_champion(params, str(previous.version), approved_by=f"rollback: {reason}")
    return {**result, "reason": reason}


def reconcile(params: Params, *, root: str | None = None) -> dict[str, Any]:
    """Make the live pointer follow the registry's ``champion`` where that is a rollback.

    ``champion`` moved to the version of the bundle that was live before the current one
    (still intact in the other slot, its canary passed in the platform's own slot record,
    its version blessed) is carried out as a compare-and-swap rollback from the current
    bundle. Anything else is returned as a disagreement (`action` "disagree") for the
    caller to report loudly: ``champion`` on a bundle no slot holds, on a rolled-back
    bundle, or on a version that is not promotable. ``champion`` on the idle bundle that
    was never live is an approval the retrain run has yet to promote ("pending")."""
    from pipelines import rollout

    slots = _slots(params, root)
    pointer = slots.read_pointer()
    view = registry.alias_view(params)
    if view.get("error"):
        return {"action": "disagree", "problem": f"the registry could not be read: {view['error']}"}
    champion = (view.get("aliases") or {}).get(registry.CHAMPION)
    live = pointer.get("bundle_id") if pointer else None
    if champion is None:
        if live and view.get("registered"):
            return {"action": "disagree", "problem": f"no `champion` alias; {live} is live"}
        return {"action": "none", "live": live}
    want, version = champion.get("bundle_id"), champion.get("version")
    base = {"live": live, "champion_version": version, "champion_bundle": want}
    if live in (champion.get("bundle_ids") or [want]):  # incl. its re-embedded bundle
        return {"action": "none", **base}
    if pointer and want and want in (pointer.get("rolled_back") or []):
        return {
            "action": "disagree",
            **base,
            "problem": f"`champion` (version {version}) names bundle {want}, which was rolled "
            f"back; {live} stays live",
        }
    if pointer and want and want == pointer.get("previous_bundle_id"):
        slot = pointer["previous_slot"]
        canary = slots.canary(slot) or {}
        if canary.get("bundle_id") != want or not canary.get("passed"):
            return {
                "action": "disagree",
                **base,
                "problem": f"`champion` names the previous bundle {want}, but its slot holds "
                "no passed canary report for it; not rolling back",
            }
        try:
            registry.check_promotable(params, str(version))
        except PromotionRefused as exc:
            return {"action": "disagree", **base, "problem": str(exc)}
        result = rollout.rollback(params, root=root, to=want, expected_live=live)
        registry.tag_version(params, str(version), "reconciled_rollback_from", str(live))
        return {"action": "rolled_back", **base, "pointer": result}
    idle = slots.idle_slot()
    if want and want == slots.bundle_id(idle):
        return {"action": "pending", **base, "problem": f"version {version} awaits promotion"}
    return {
        "action": "disagree",
        **base,
        "problem": f"`champion` (version {version}) names bundle {want}, which no slot can "
        f"serve as a rollback; {live} stays live",
    }
