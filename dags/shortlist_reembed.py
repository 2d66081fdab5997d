"""
### shortlist_reembed: the catalog changed, the model did not

Re-embeds every item of the current `data.dir` with the **live** item tower (the model
files inside the live bundle), rebuilds the FAISS index into the idle slot, runs the
canary and promotes **without approval**: the model version is the same, so the live
user tower stays consistent with the new item embeddings by construction. The registry
keeps `champion` on the same version; the version is tagged with the new bundle id.

Schedule: `schedules.reembed` (daily, UTC; unpausing never starts a run for a past
tick). `max_active_runs=1`. Nothing is promoted when
there is no live bundle yet (the retrain DAG makes the first one) or the canary fails.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from airflow.sdk import dag, task
from airflow.sdk import get_current_context as ctx

if str(Path(__file__).parent) not in sys.path:
    sys.path.append(str(Path(__file__).parent))

from _common import (  # noqa: E402
    DEFAULT_ARGS,
    START_DATE,
    cron_schedule,
    describe_cron,
    in_project_dir,
    parse_time_params,
    run_key,
    run_params,
    run_params_spec,
    task_logging,
    where,
)

log = logging.getLogger(__name__)
P = parse_time_params()


@dag(
    dag_id="shortlist_reembed",
    schedule=cron_schedule(P.schedules.reembed),
    description="Re-embed the catalog with the live model, no approval needed. Runs "
    f"{describe_cron(P.schedules.reembed)}.",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["shortlist", "index", "promotion"],
    doc_md=__doc__,
    params=run_params_spec(),
)
def shortlist_reembed() -> None:
    @task.short_circuit(doc_md="Skip the run when nothing is live yet.")
    def has_live() -> bool:
        from shortlist.bundle.slots import Slots

        params, root = run_params(ctx())
        return Slots(where(root, params.bundle.root)).live_slot() is not None

    @task(doc_md="Copy the live bundle's model files (towers + ranker) for this run.")
    def live_model() -> dict[str, Any]:
        import shutil

        from shortlist.bundle.bundle import MODEL, local_copy
        from shortlist.bundle.slots import Slots

        params, root = run_params(ctx())
        slots = Slots(where(root, params.bundle.root))
        live = slots.live_slot()
        out = Path(where(root, params.project.work_dir)) / "reembed" / run_key(ctx()) / "model"
        shutil.rmtree(out, ignore_errors=True)
        with local_copy(slots.slot_location(live)) as bundle_dir:
            shutil.copytree(Path(bundle_dir) / MODEL, out)
        return {"model_dir": str(out), "live_bundle_id": slots.bundle_id(live)}

    @task(doc_md="Embed every item with the live item tower; index into the idle slot.")
    def build_bundle(model: dict[str, Any]) -> dict[str, Any]:
        from pipelines import build_bundle as stage

        params, root = run_params(ctx())
        with in_project_dir(root), task_logging(log):
            built = stage.run(
                params,
                model_dir=model["model_dir"],
                data_dir=where(root, params.data.dir),
                root=where(root, params.bundle.root),
            )
        return {**model, "bundle_id": built["bundle_id"]}

    @task(retries=0, doc_md="Canary the idle slot, then promote it (same model version).")
    def canary_and_promote(built: dict[str, Any]) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from pipelines import canary, rollout
        from shortlist import registry

        params, root = run_params(ctx())
        bundles = where(root, params.bundle.root)
        with in_project_dir(root), task_logging(log):
            report = canary.run(params, root=bundles, slot="idle")
            if not report["passed"]:
                raise AirflowFailException("canary failed: " + "; ".join(report["reasons"]))
            pointer = rollout.promote(params, root=bundles)
            version = registry.find_version(params, built["live_bundle_id"])
            if version is not None:
                registry.tag_version(
                    params, str(version.version), "reembedded_bundle_id", built["bundle_id"]
                )
        return {**built, "pointer": pointer}

    gate = has_live()
    model = live_model()
    gate >> model
    canary_and_promote(build_bundle(model))


reembed_dag = shortlist_reembed()
