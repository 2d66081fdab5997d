"""Stage: re-embed the catalog, build the ANN index, write a bundle into the idle slot.

`run(params, model_dir=..., data_dir=..., root=None)`; the artifact root defaults to
`params.bundle.root`. The live slot is never written: the build goes to the slot the
pointer does not name, and a promotion that happened meanwhile aborts the build before
its manifest (the last file) is written.
"""

from __future__ import annotations

import logging
from typing import Any

from shortlist.config import Params

log = logging.getLogger(__name__)


def run(
    params: Params, *, model_dir: str, data_dir: str, root: str | None = None
) -> dict[str, Any]:
    from shortlist import tracking
    from shortlist.bundle.bundle import build_bundle
    from shortlist.bundle.slots import Slots
    from shortlist.errors import BundleError

    slots = Slots(root or params.bundle.root, endpoint_url=params.storage.s3_endpoint_url)
    slot = slots.idle_slot()
    dest = slots.slot_location(slot)
    with tracking.start_run(params, f"build-bundle-{slot}", "build_bundle", {"slot": slot}) as run:
        manifest = build_bundle(
            params,
            model_dir=model_dir,
            data_dir=data_dir,
            dest=dest,
            lineage={"bundle_run_id": run.info.run_id},
        )
        if slots.live_slot() == slot:
            raise BundleError(f"slot {slot} went live during the build; bundle discarded")
        import mlflow

        stats = manifest.stats
        mlflow.set_tag("bundle_id", manifest.bundle_id)
        mlflow.log_params(
            {
                "index_type": manifest.index_type,
                **{f"index.{k}": v for k, v in manifest.index_params.items()},
                "item_count": manifest.item_count,
                "model_fingerprint": manifest.model_fingerprint[:16],
                "data_snapshot_id": manifest.data_snapshot_id,
            }
        )
        mlflow.log_metrics(
            {
                "embed_items_per_second": stats["embed"]["items_per_second"],
                "index_build_seconds": stats["index"]["build_seconds"],
                "index_rss_delta_mib": stats["index"]["rss_delta_bytes"] / 2**20,
                "bundle_build_seconds": stats["build_seconds"],
            }
        )
        mlflow.log_text(manifest.to_json(), "manifest.json")
    log.info("bundle %s in slot %s", manifest.bundle_id, slot)
    return {
        "bundle_id": manifest.bundle_id,
        "slot": slot,
        "location": dest,
        "item_count": manifest.item_count,
        "index_type": manifest.index_type,
        "stats": manifest.stats,
    }
