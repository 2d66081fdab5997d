"""Stages: promote the idle slot, roll back, and report what is live where.

Promotion flips the live pointer only after the idle bundle was checked whole, here and
now: its own canary report passed for the bundle it holds, every file matches the
manifest, the manifest matches its bundle id, the model loads and agrees with the
manifest, and a warm-up request is served from it through the serving code. The flip is
one compare-and-swap on explicit bundle ids (the idle bundle that was verified, over the
live bundle that was read), so a changed slot or a lost race is refused
(PromotionRefused) and production stays exactly as it was.

Rollback goes back once, to the bundle that was live before, after checking its files;
it is never a toggle (see `Slots.rollback`). `status` answers "what is live" from every
side: the pointer, the slots (with a file check), the registry's aliases and the bundle
each named server really serves, and lists every disagreement between them.
"""

from __future__ import annotations

import time
from typing import Any

from shortlist.config import Params


def _slots(params: Params, root: str | None):
    from shortlist.bundle.slots import Slots

    return Slots(root or params.bundle.root, endpoint_url=params.storage.s3_endpoint_url)


def verify_for_serving(params: Params, location: str, bundle_id: str) -> dict[str, Any]:
    """Load the bundle at `location` as a server would (every checksum, the manifest, the
    model contract) and serve warm-up requests from it; PromotionRefused naming the
    problem otherwise. Returns what was checked."""
    from shortlist.bundle.bundle import load_bundle
    from shortlist.errors import BundleError, PromotionRefused
    from shortlist.serving.recommend import prepare, warm_up

    t0 = time.perf_counter()
    try:
        bundle = load_bundle(location, cache_dir=params.bundle.cache_dir)
    except BundleError as exc:
        raise PromotionRefused(f"bundle {bundle_id} does not verify: {exc}") from None
    if bundle.bundle_id != bundle_id:
        raise PromotionRefused(
            f"{location} now holds bundle {bundle.bundle_id}, not {bundle_id}: it changed "
            "while being verified"
        )
    try:
        warm_up(prepare(bundle, location), params)
    except Exception as exc:  # noqa: BLE001 - any failure to answer refuses the bundle
        raise PromotionRefused(
            f"bundle {bundle_id} loads but cannot answer a warm-up request: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    return {
        "files": len(bundle.manifest.files),
        "items": int(bundle.manifest.item_count),
        "verify_seconds": round(time.perf_counter() - t0, 3),
    }


def promote(
    params: Params, *, root: str | None = None, bundle_id: str | None = None
) -> dict[str, Any]:
    """Verify the idle bundle whole, then flip the pointer to it (compare-and-swap).

    `bundle_id`: refuse unless the idle slot holds exactly that bundle."""
    from shortlist.errors import PromotionRefused

    slots = _slots(params, root)
    pointer = slots.read_pointer()
    live_bundle = pointer["bundle_id"] if pointer else None
    idle = slots.idle_slot()
    held = slots.bundle_id(idle)
    if held is None:
        raise PromotionRefused(f"the idle slot {idle} holds no complete bundle")
    if bundle_id is not None and held != bundle_id:
        raise PromotionRefused(f"the idle slot {idle} holds bundle {held}, not {bundle_id}")
    if held in ((pointer or {}).get("rolled_back") or []):
        raise PromotionRefused(
            f"bundle {held} in slot {idle} was rolled back: it does not go live again "
            "(build and canary a new bundle instead)"
        )
    canary = slots.canary(idle)
    if canary is None or canary.get("bundle_id") != held:
        raise PromotionRefused(f"bundle {held} in slot {idle} has no canary report: run canary")
    if not canary.get("passed"):
        reasons = "; ".join(canary.get("reasons") or []) or "failed"
        raise PromotionRefused(f"bundle {held} failed its canary: {reasons}")
    checked = verify_for_serving(params, slots.slot_location(idle), held)
    t0 = time.perf_counter()
    new = slots.promote(expected_bundle_id=held, expected_live=live_bundle)
    return {**new, "verified": checked, "seconds": round(time.perf_counter() - t0, 4)}


def rollback(
    params: Params,
    *,
    root: str | None = None,
    to: str | None = None,
    expected_live: str | None = None,
) -> dict[str, Any]:
    """Go back to the bundle live before the current one, once, after checking its files.

    `expected_live`: refuse unless that bundle is still live (the one a caller measured or
    saw); `to`: refuse unless that is the bundle rollback would go back to."""
    from shortlist.bundle.bundle import verify_location
    from shortlist.errors import BundleError, PromotionRefused

    slots = _slots(params, root)
    pointer = slots.read_pointer()
    target_slot = (pointer or {}).get("previous_slot")
    target = (pointer or {}).get("previous_bundle_id")
    if target_slot and target and slots.bundle_id(target_slot) == target:
        try:
            verify_location(slots.slot_location(target_slot), cache_dir=params.bundle.cache_dir)
        except BundleError as exc:
            raise PromotionRefused(
                f"the previous bundle {target} is damaged, rolling back to it would serve "
                f"nothing: {exc}"
            ) from None
    t0 = time.perf_counter()
    new = slots.rollback(expected_live=expected_live, to=to)
    return {**new, "seconds": round(time.perf_counter() - t0, 4)}


# ----------------------------------------------------------------------------- status


def _slot_files_problem(slots: Any, slot: str, manifest: dict[str, Any] | None) -> str | None:
    """A cheap integrity check of a slot (presence and size of every listed file)."""
    if not manifest or "files" not in manifest:
        return None
    sizes = manifest.get("sizes") or {}
    store = slots.store
    listed = set(store.list(f"{slot}/"))
    for name in sorted(manifest["files"]):
        key = f"{slot}/{name}"
        if key not in listed:
            return f"{name} is missing"
        path = getattr(store, "_path", None)
        if path is not None and name in sizes:
            size = path(key).stat().st_size
            if size != sizes[name]:
                return f"{name} is {size} bytes, the manifest says {sizes[name]}"
    return None


def server_views(urls: list[str], timeout: float = 3.0) -> list[dict[str, Any]]:
    """What each running server says it serves: its `/version` (and `/ready`)."""
    import json
    import urllib.error
    import urllib.request

    out = []
    for url in urls:
        base = url.rstrip("/")
        view: dict[str, Any] = {"url": base}
        for path in ("/ready", "/version"):
            try:
                with urllib.request.urlopen(base + path, timeout=timeout) as resp:
                    view[path[1:]] = json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                try:
                    view[path[1:]] = {"status": exc.code, **json.loads(exc.read())}
                except ValueError:
                    view[path[1:]] = {"status": exc.code}
            except (urllib.error.URLError, OSError, ValueError) as exc:
                view["error"] = f"unreachable: {exc}"
                break
        version = view.get("version") or {}
        view["bundle_id"] = version.get("bundle_id")
        view["last_error"] = version.get("last_error") or (view.get("ready") or {}).get("detail")
        out.append(view)
    return out


def disagreements(status: dict[str, Any]) -> list[str]:
    """Every way the sides of `status` disagree about what is live (empty: they agree)."""
    out: list[str] = []
    pointer = status.get("pointer") or {}
    live_id = pointer.get("bundle_id")
    live = status.get("live") or {}
    if pointer and live.get("bundle_id") != live_id:
        out.append(
            f"the pointer names bundle {live_id} but slot {pointer.get('live_slot')} holds "
            f"{live.get('bundle_id')}"
        )
    if live.get("files_problem"):
        out.append(f"the live bundle {live_id} is damaged: {live['files_problem']}")
    registry = status.get("registry") or {}
    champion = (registry.get("aliases") or {}).get("champion")
    if registry.get("error"):
        out.append(f"the registry could not be read: {registry['error']}")
    elif champion and live_id not in (champion.get("bundle_ids") or [champion.get("bundle_id")]):
        out.append(
            f"the registry's champion is version {champion.get('version')} (bundle "
            f"{champion.get('bundle_id')}) but the live pointer names {live_id}"
        )
    elif live_id and registry.get("registered") and not champion:
        out.append(f"the registry has no champion alias, the live pointer names {live_id}")
    for server in status.get("servers") or []:
        if server.get("error"):
            out.append(f"server {server['url']} is {server['error']}")
        elif server.get("bundle_id") != live_id:
            why = f" ({server['last_error']})" if server.get("last_error") else ""
            out.append(
                f"server {server['url']} serves {server.get('bundle_id') or 'nothing'}, "
                f"not the live {live_id}{why}"
            )
        elif server.get("last_error"):
            out.append(f"server {server['url']} reports: {server['last_error']}")
    return out


def status(
    params: Params,
    *,
    root: str | None = None,
    servers: list[str] | None = None,
    registry: bool = True,
) -> dict[str, Any]:
    """Pointer, slots (with a file check), registry aliases, each server's `/version`, and
    the list of disagreements between them."""
    slots = _slots(params, root)
    out = slots.status()
    for role in ("live", "idle"):
        s = out.get(role)
        if s:
            problem = _slot_files_problem(slots, s["slot"], slots.manifest(s["slot"]))
            s["files_problem"] = problem
            if problem and s.get("canary"):
                s["canary"] = {**s["canary"], "stale": True}
    if registry:
        from shortlist import registry as reg

        out["registry"] = reg.alias_view(params)
    out["servers"] = server_views(servers or [])
    out["disagreements"] = disagreements(out)
    return out


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def format_status(status: dict[str, Any]) -> str:
    """Human-readable status: the pointer, one line per slot, the registry, the servers,
    and every disagreement (prefixed DISAGREE) last."""
    lines = [f"root: {status['root']}"]
    pointer = status.get("pointer")
    if pointer:
        extra = ""
        if pointer.get("action") == "rollback":
            extra = f" (rolled back from {pointer.get('rolled_back_from')})"
        lines.append(
            f"pointer: live={pointer['live_slot']} bundle={pointer['bundle_id']} "
            f"previous={pointer.get('previous_bundle_id') or '-'} "
            f"updated {pointer['updated_at']} ({_age(status.get('pointer_age_seconds'))} ago)"
            + extra
        )
    else:
        lines.append("pointer: none (nothing promoted yet)")
    for role in ("live", "idle"):
        s = status.get(role)
        if not s:
            lines.append(f"{role}: -")
            continue
        canary = s.get("canary")
        if s.get("files_problem"):
            verdict = f"DAMAGED: {s['files_problem']}"
        elif canary is None:
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
    registry = status.get("registry")
    if registry is not None:
        if registry.get("error"):
            lines.append(f"registry: unreadable ({registry['error']})")
        elif not registry.get("registered"):
            lines.append("registry: no registered model yet")
        else:
            aliases = registry.get("aliases") or {}
            shown = ", ".join(
                f"{alias}=v{a['version']} ({a.get('bundle_id')})"
                for alias, a in sorted(aliases.items())
            )
            lines.append(f"registry: {registry.get('model')}: {shown or 'no aliases'}")
    for server in status.get("servers") or []:
        if server.get("error"):
            lines.append(f"server {server['url']}: {server['error']}")
        else:
            ready = (server.get("ready") or {}).get("ready")
            lines.append(
                f"server {server['url']}: serves {server.get('bundle_id') or 'nothing'}"
                f" ready={bool(ready)}"
            )
    for problem in status.get("disagreements") or []:
        lines.append(f"DISAGREE: {problem}")
    return "\n".join(lines)
