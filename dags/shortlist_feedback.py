"""
### shortlist_feedback: served lists and what users did with them → training data

**join** reads the impressions log (`serving.impressions_dir`) and the events log
(`feedback.events_dir`) for each window of `feedback.window_seconds` that is closed at
the run's time (its end lies `feedback.lateness_seconds` plus the logs' flush intervals
back, so no event for it can still arrive) and comes after the newest batch (at most
`feedback.max_catch_up_windows`, so missed runs are caught up), and writes one batch per
window to `feedback.batches_dir`: engaged items as interactions weighted by engagement, every
shown item as an exposure with its propensity. **land** merges every batch into
`data.dir` through the data contract (Great Expectations, as `shortlist_data`): a merge
that fails is quarantined, the run fails without retries and `data.dir` stays as it was;
on success the next `shortlist_retrain` run trains on it. `land` emits the asset
`shortlist://feedback`.

* **Idempotent:** a run's window follows from its time alone; the same logs give the
  same batch (a re-run reports it unchanged) and landing the same batches adds nothing.
* **Schedule:** `feedback.schedule` in params.yaml (UTC cron, hourly by default).
  Windows older than the catch-up limit are joined by hand with
  `shortlist feedback --end <window end>`.
* Run conf (all optional): `{"params_file": "...", "overrides": ["key=value", ...]}`.

The stage is `pipelines.feedback` (`join`, `land`), which `shortlist feedback` calls too.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, dag, get_current_context, task

if str(Path(__file__).parent) not in sys.path:
    sys.path.append(str(Path(__file__).parent))

from _common import (  # noqa: E402
    DEFAULT_ARGS,
    START_DATE,
    cron_schedule,
    describe_cron,
    in_project_dir,
    parse_time_params,
    run_params,
    run_params_spec,
    task_logging,
    where,
)

log = logging.getLogger(__name__)
P = parse_time_params()
FEEDBACK = Asset("shortlist://feedback")


def _run_time(context: Any) -> float:
    """The time this run stands for: its interval's end, else its logical date, else when
    it was due; a retry of the run therefore joins the same window."""
    for key in ("data_interval_end", "logical_date"):
        stamp = context.get(key)
        if stamp is not None:
            return stamp.timestamp()
    run_after = getattr(context.get("dag_run"), "run_after", None)
    return run_after.timestamp() if run_after is not None else time.time()


@dag(
    dag_id="shortlist_feedback",
    schedule=cron_schedule(P.feedback.schedule),
    description="Join impressions and events into a batch, land it through the data "
    f"contract; emits shortlist://feedback. Runs {describe_cron(P.feedback.schedule)}.",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["shortlist", "data", "feedback"],
    doc_md=__doc__,
    params=run_params_spec(),
)
def shortlist_feedback() -> None:
    @task(doc_md="Join the latest closed window's impressions and events into a batch.")
    def join() -> dict[str, Any]:
        from pipelines import feedback

        context = get_current_context()
        params, root = run_params(context)
        with in_project_dir(root), task_logging(log):
            result = feedback.run(params, now=_run_time(context))
        log.info("%s", feedback.summary_line(result))
        keys = ("path", "status", "snapshot_id", "window", "exposures", "engaged", "events")
        return {"batches": [{k: b[k] for k in keys} for b in result["batches"]]}

    @task(
        retries=0,
        outlets=[FEEDBACK],
        doc_md="Merge every batch into `data.dir` through the data contract; a failing "
        "merge is quarantined and fails the run without retry.",
    )
    def land(joined: dict[str, Any]) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from pipelines import feedback
        from shortlist.data.io import read_snapshot
        from shortlist.errors import DataValidationError

        context = get_current_context()
        params, root = run_params(context)
        if not read_snapshot(where(root, params.data.dir)):
            raise AirflowSkipException(f"no dataset at {params.data.dir} to land into yet")
        try:
            with in_project_dir(root), task_logging(log):
                landed = feedback.land(params)
        except DataValidationError as exc:
            raise AirflowFailException(str(exc)) from None
        log.info("landed: %s", landed)
        context["outlet_events"][FEEDBACK].extra = {
            "windows": [b["window"] for b in joined["batches"]],
            "landed": landed["landed"],
            "snapshot_id": landed.get("snapshot_id"),
        }
        return landed

    land(join())


feedback_dag = shortlist_feedback()
