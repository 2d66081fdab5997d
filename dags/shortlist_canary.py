"""
### shortlist_canary: the live index's recall SLO, every hour

ANN recall@k of the **live** index against exact search on sampled users, live-path
recall and tower/embedding consistency, plus live-path latency. The report goes to the
live slot's `canary.json` (the serving API exports its recall on `/metrics`) and to
MLflow. `canary.breaches_before_rollback` breaches in a row (default 2) roll back to
the previous bundle (only the bundle measured, and only while it is still live) and fail
the run, which is the alert.

First, **reconcile** the registry with the live pointer: the `champion` alias is the
desired state. `champion` moved in the MLflow UI back to the version of the bundle live
before is carried out as a rollback; any other disagreement fails the task (the alert)
and is logged; the live check still runs.

Schedule: `schedules.canary` (hourly). Nothing happens when nothing is live yet.
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
    in_project_dir,
    parse_time_params,
    run_params,
    run_params_spec,
    where,
)

log = logging.getLogger(__name__)
P = parse_time_params()


@dag(
    dag_id="shortlist_canary",
    schedule=cron_schedule(P.schedules.canary),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args={**DEFAULT_ARGS, "retries": 0},  # a retry would double-count a breach
    tags=["shortlist", "monitoring"],
    doc_md=__doc__,
    params=run_params_spec(),
)
def shortlist_canary() -> None:
    @task(doc_md="`champion` moved back to the previous bundle: roll back; other drift: fail.")
    def reconcile() -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from pipelines import release

        params, root = run_params(ctx())
        with in_project_dir(root):
            result = release.reconcile(params, root=where(root, params.bundle.root))
        log.info("reconcile: %s", result)
        if result["action"] == "disagree":
            raise AirflowFailException(f"registry and live pointer disagree: {result['problem']}")
        return result

    @task(
        trigger_rule="all_done",
        doc_md="Canary the live slot; roll back after repeated breaches and fail (alert).",
    )
    def check_live() -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from pipelines import monitor
        from shortlist.bundle.slots import Slots

        params, root = run_params(ctx())
        bundles = where(root, params.bundle.root)
        if Slots(bundles).live_slot() is None:
            raise AirflowSkipException("nothing is live yet")
        with in_project_dir(root):
            report = monitor.run(params, root=bundles)
        log.info("live canary: passed=%s breaches=%s", report["passed"], report["breaches"])
        if report["rolled_back"]:
            raise AirflowFailException(
                f"live canary breached {params.canary.breaches_before_rollback} times in a row: "
                f"rolled back to {report['rollback']['bundle_id']}"
            )
        return {k: report[k] for k in ("bundle_id", "passed", "breaches", "checked_at")}

    reconcile() >> check_live()


canary_dag = shortlist_canary()
