"""
### shortlist_retrain: fresh data to an approved, promoted bundle

validate → split → tune (when `tuning.in_retrain` and the data changed shape) → train
towers → train ranker (kept only if it beats the retrieval order) → evaluate & bless →
build bundle into the idle slot (embed every item, FAISS index) → canary → register the challenger in
MLflow → **await approval** → promote (one pointer flip) → canary on live → roll back
automatically if that fails.

**Approve** (a person, in the MLflow UI): the `await_approval` task log names the version
and links its page (Models → `promotion.registered_model` → the version with the
`challenger` alias). The page compares challenger and champion metric by metric, with
the threshold that applied, and links the plots. To approve, click the pencil beside
*Aliases*, add `champion`, Save; within `promotion.poll_seconds` the sensor sees it,
the live pointer flips, `challenger` is removed and the description records the
approval. Not approved within `promotion.approval_timeout_seconds` (8 h by default):
the run ends *skipped*, nothing changes. `promotion.auto_approve: true` approves
unattended (`approved_by=auto`).

**Trigger by hand** with the ▶ button; the form's fields are optional: `params_file`
(another params.yaml) and `overrides` (`["section.key=value", ...]`, as `shortlist
--set`, e.g. `promotion.auto_approve=true`). Every DAG starts paused; unpausing never
starts a run for a past schedule tick.

**Schedule:** `schedules.retrain` (UTC cron; `@weekly` = Sunday 00:00) *or* each new
`shortlist://validated-data` asset event (the `shortlist_data` DAG emits it), whichever
comes first; the UI's "Next Run" shows the next cron tick.

**Queued or stuck runs:** `max_active_runs=1`, so promotions never overlap: a run waits
(*queued*) while another one is running, including one whose `await_approval` is still
waiting for a person (*up_for_reschedule*). To free the slot, approve or reject in
MLflow, or mark that run failed (Browse → Runs → the run → *Mark as failed*): its
challenger is simply never promoted. A task that failed on a transient error retries
twice with backoff; `validate` and `register` never retry.

* **Gates:** a NOT_BLESSED challenger (it must beat every baseline and the champion)
  or a failed canary short-circuits everything after it; a version that is not blessed
  or failed its canary is refused at promotion even if `champion` points at it.
* **Idempotent:** outputs live under `<work_dir>/runs/<data interval>/`; a retry reuses
  a finished model, rebuilds only the idle slot, finds the registry version by bundle
  id; only `promote` and `rollback_on_failure` touch the live pointer.
* **Task logs:** long stages write a progress line every 30 s (step, elapsed<ETA,
  loss, validation metric).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, AssetOrTimeSchedule, dag, task
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
VALIDATED_DATA = Asset("shortlist://validated-data")
LIVE_BUNDLE = Asset("shortlist://live-bundle")


def _duration(seconds: float) -> str:
    """Seconds as "7h 59m" / "4m 10s" for the sensor's log line."""
    s = int(seconds)
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


def _run_dir(params, root: Path) -> Path:
    return Path(where(root, params.project.work_dir)) / "runs" / run_key(ctx())


@dag(
    dag_id="shortlist_retrain",
    schedule=AssetOrTimeSchedule(
        timetable=cron_schedule(P.schedules.retrain), assets=VALIDATED_DATA
    ),
    description="Train, bless, approve in MLflow, promote. Runs "
    f"{describe_cron(P.schedules.retrain)} and on each validated data batch.",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["shortlist", "training", "promotion"],
    doc_md=__doc__,
    params=run_params_spec(),
)
def shortlist_retrain() -> None:
    @task(retries=0, doc_md="Data contract on `data.dir`; a bad batch stops the run here.")
    def validate() -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from pipelines import validate as stage

        params, root = run_params(ctx())
        data_dir = where(root, params.data.dir)
        with in_project_dir(root), task_logging(log):
            report = stage.run(params, data_dir=data_dir)
        log.info("%s", report.summary())
        if not report.success:
            raise AirflowFailException(report.summary().splitlines()[0])
        return {"data_dir": data_dir, "snapshot_id": report.snapshot_id}

    @task(doc_md="Temporal split of the validated snapshot into this run's directory.")
    def split(validated: dict[str, Any]) -> dict[str, Any]:
        from pipelines import split as stage

        params, root = run_params(ctx())
        out = _run_dir(params, root) / "split"
        with in_project_dir(root), task_logging(log):
            manifest = stage.run(params, data_dir=validated["data_dir"], out_dir=str(out))
        return {**validated, "split_dir": str(out), "counts": manifest["counts"]}

    @task(
        doc_md="Budgeted search (`shortlist tune`) when `tuning.in_retrain` is on and no "
        "tuning file fits this data's shape; otherwise it only says which values apply."
    )
    def tune(data: dict[str, Any]) -> dict[str, Any]:
        import json

        from shortlist.tuning import apply_tuning

        params, root = run_params(ctx())
        manifest = json.loads((Path(data["split_dir"]) / "split.json").read_text())
        with in_project_dir(root):
            _, record = apply_tuning(params, manifest)
        if record["applied"] or not params.tuning.in_retrain:
            log.info("no search this run (tuning.in_retrain=%s): %s", params.tuning.in_retrain,
                     record)  # fmt: skip
            return data
        from pipelines import tune as stage

        log.info("searching for %.1f minutes: %s", params.tuning.budget_minutes, record["reason"])
        with in_project_dir(root), task_logging(log):
            doc = stage.run(params, split_dir=data["split_dir"])
        log.info("validation %s -> %s with %s", doc["towers"]["defaults"],
                 doc["towers"]["best"], doc["best"])  # fmt: skip
        return data

    @task(doc_md="Two-tower retrieval model (in-batch softmax + logQ); reused on retry.")
    def train_towers(data: dict[str, Any]) -> dict[str, Any]:
        from pipelines import train_towers as stage

        params, root = run_params(ctx())
        out = _run_dir(params, root) / "model"
        done = out / "towers.json"
        if done.exists() and data["snapshot_id"] in done.read_text():
            log.info("towers for snapshot %s already trained in %s", data["snapshot_id"], out)
        else:
            with in_project_dir(root), task_logging(log):
                stage.run(params, split_dir=data["split_dir"], out_dir=str(out))
        return {**data, "model_dir": str(out)}

    @task(doc_md="Ranker over the towers' candidates, saved beside them.")
    def train_ranker(data: dict[str, Any]) -> dict[str, Any]:
        from pipelines import train_ranker as stage

        params, root = run_params(ctx())
        # ranker_metrics.json is written whether or not the ranker shipped.
        if not (Path(data["model_dir"]) / "ranker_metrics.json").exists():
            with in_project_dir(root), task_logging(log):
                stage.run(params, split_dir=data["split_dir"], model_dir=data["model_dir"])
        return data

    @task(doc_md="Full-ranking evaluation vs champion and baselines → BLESSED / NOT_BLESSED.")
    def evaluate(data: dict[str, Any]) -> dict[str, Any]:
        from pipelines import bless

        params, root = run_params(ctx())
        with in_project_dir(root), task_logging(log):
            result = bless.run(
                params,
                model_dir=data["model_dir"],
                split_dir=data["split_dir"],
                root=where(root, params.bundle.root),
                out_dir=str(_run_dir(params, root) / "eval"),
            )
        log.info("%s: %s", result["blessing"]["verdict"], "; ".join(result["blessing"]["reasons"]))
        return {**data, "evaluation": result}

    @task.short_circuit(doc_md="Stop here (nothing changes) unless the challenger is BLESSED.")
    def is_blessed(data: dict[str, Any]) -> bool:
        return bool(data["evaluation"]["blessing"]["blessed"])

    @task(doc_md="Embed every item with the new item tower, build the index, write the idle slot.")
    def build_bundle(data: dict[str, Any]) -> dict[str, Any]:
        from pipelines import build_bundle as stage

        params, root = run_params(ctx())
        with in_project_dir(root), task_logging(log):
            built = stage.run(
                params,
                model_dir=data["model_dir"],
                data_dir=data["data_dir"],
                root=where(root, params.bundle.root),
            )
        return {**data, "bundle_id": built["bundle_id"]}

    @task(doc_md="Idle slot: ANN recall vs exact, live-path recall, tower/embedding consistency.")
    def canary(data: dict[str, Any]) -> dict[str, Any]:
        from pipelines import canary as stage

        params, root = run_params(ctx())
        with in_project_dir(root), task_logging(log):
            report = stage.run(params, root=where(root, params.bundle.root), slot="idle")
        return {**data, "canary_passed": bool(report["passed"]), "canary": report}

    @task(retries=0, doc_md="Register the bundle as a model version; `challenger` if it passed.")
    def register(data: dict[str, Any]) -> dict[str, Any]:
        from pipelines import release

        params, root = run_params(ctx())
        with in_project_dir(root), task_logging(log):
            reg = release.register_challenger(
                params, evaluation=data["evaluation"], root=where(root, params.bundle.root)
            )
        import time

        from shortlist.review import version_url

        log.info(
            "registered version %s (bundle %s, blessed=%s, canary passed=%s): %s",
            reg["version"],
            reg["bundle_id"],
            reg["blessed"],
            reg["canary_passed"],
            version_url(params, reg["version"]),
        )
        return {"bundle_id": data["bundle_id"], **reg, "registered_at": time.time()}

    @task.short_circuit(doc_md="Stop here (nothing changes) when the canary failed.")
    def canary_passed(reg: dict[str, Any]) -> bool:
        return bool(reg["canary_passed"])

    @task.sensor(
        poke_interval=P.promotion.poll_seconds,
        timeout=P.promotion.approval_timeout_seconds,
        mode="reschedule",
        soft_fail=True,
        retries=0,
        doc_md="Wait for a person to move `champion` to the challenger in the MLflow UI "
        "(or auto-approve). Times out as *not approved*: downstream is skipped.",
    )
    def await_approval(reg: dict[str, Any]):
        import time

        from airflow.sdk import PokeReturnValue
        from airflow.sdk.exceptions import AirflowSkipException

        from pipelines import release
        from shortlist.review import version_url

        params, root = run_params(ctx())
        with task_logging(log):
            approved = release.await_approval(params, version=reg["version"], timeout_s=0)
        if approved:
            log.info("version %s approved: `champion` points at it", reg["version"])
            return PokeReturnValue(is_done=True, xcom_value=reg)
        waited = time.time() - reg["registered_at"]
        left = params.promotion.approval_timeout_seconds - waited
        if left <= 0:
            raise AirflowSkipException(
                f"version {reg['version']} not approved within {waited:.0f}s: nothing changes"
            )
        log.info(
            "waiting for approval of version %s (bundle %s): move the `champion` alias to it "
            "at %s ; %s left (until %s), next check in %ss",
            reg["version"],
            reg["bundle_id"],
            version_url(params, reg["version"]),
            _duration(left),
            time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(time.time() + left)),
            params.promotion.poll_seconds,
        )
        return PokeReturnValue(is_done=False)

    @task(retries=0, outlets=[LIVE_BUNDLE], doc_md="Flip the live pointer to the approved bundle.")
    def promote(reg: dict[str, Any]) -> dict[str, Any]:
        from pipelines import release
        from shortlist import review

        params, root = run_params(ctx())
        with in_project_dir(root), task_logging(log):
            pointer = release.promote_approved(
                params, version=reg["version"], root=where(root, params.bundle.root)
            )
            review.record_promotion(params, reg["version"])
        log.info("live: %s", pointer)
        return {**reg, "pointer": pointer}

    @task(retries=0, doc_md="Canary on the live slot; on failure roll back and fail (alert).")
    def rollback_on_failure(promoted: dict[str, Any]) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from pipelines import canary as stage
        from pipelines import release

        params, root = run_params(ctx())
        bundles = where(root, params.bundle.root)
        with in_project_dir(root), task_logging(log):
            report = stage.run(params, root=bundles, slot="live")
            if report["passed"]:
                return {**promoted, "live_canary": "passed"}
            back = release.rollback_live(
                params,
                root=bundles,
                reason="post-promotion canary",
                expected_live=report["bundle_id"],  # only the bundle it measured, if still live
            )
        raise AirflowFailException(f"live canary failed, rolled back to {back['bundle_id']}")

    data = train_ranker(train_towers(tune(split(validate()))))
    evaluated = evaluate(data)
    built = build_bundle(evaluated)
    is_blessed(evaluated) >> built
    reg = register(canary(built))
    approved = await_approval(reg)
    canary_passed(reg) >> approved
    rollback_on_failure(promote(approved))


retrain_dag = shortlist_retrain()
