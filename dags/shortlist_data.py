"""
### shortlist_data: ingest → validate → split

Imports the configured source (`data.source` at `data.path`; with `data.path` empty the
embedded default: MovieLens 100K from `../shared/datasets/ml-100k` when present, else the
synthetic generator, as `make demo` and `dvc repro` do) into `data.dir`, runs the data contract
(Great Expectations) and, only if it passes, splits the snapshot by time into
`split.dir`.

* A failing validation quarantines the batch and fails the run **without retries**
  (the data is wrong, not the machine); `split` does not run.
* On success `validate` emits the asset `shortlist://validated-data` and `split`
  emits `shortlist://split`; DAGs scheduled on those assets start from here.
* Schedule: `schedules.data` in params.yaml (UTC; unpausing never starts a run for a
  past tick). Retries: 2, with exponential backoff.
* Run conf (all optional): `{"params_file": "...", "overrides": ["key=value", ...]}`.

The stages are the functions `shortlist ingest|validate|split` and `dvc repro` call
(`pipelines.ingest.run`, `pipelines.validate.run`, `pipelines.split.run`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, dag, get_current_context, task

if str(Path(__file__).parent) not in sys.path:  # the DAGs folder is on sys.path in Airflow
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

# DAGs scheduled on these use the same URI strings (Airflow stores them normalised,
# with a trailing slash: "shortlist://split/").
VALIDATED_DATA = Asset("shortlist://validated-data")
SPLIT_DATA = Asset("shortlist://split")


@dag(
    dag_id="shortlist_data",
    schedule=cron_schedule(parse_time_params().schedules.data),
    description="Ingest, validate, split; emits shortlist://validated-data. Runs "
    f"{describe_cron(parse_time_params().schedules.data)}.",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["shortlist", "data"],
    doc_md=__doc__,
    params=run_params_spec(),
)
def shortlist_data() -> None:
    @task(doc_md="Import `data.source` into `data.dir` (Parquet tables + snapshot.json).")
    def ingest() -> dict[str, Any]:
        params, root = run_params(get_current_context())
        out_dir = where(root, params.data.dir)
        with in_project_dir(root), task_logging(log):
            from shortlist.demo import default_dataset, ingest_data

            dataset, fallback = default_dataset(params)
            local = params.with_overrides({"data.dir": out_dir})
            manifest, what = ingest_data(local, dataset, fallback=fallback)
        log.info("source: %s", what)
        log.info(
            "ingested %s into %s (snapshot %s)", manifest["rows"], out_dir, manifest["snapshot_id"]
        )
        return {
            "data_dir": out_dir,
            "snapshot_id": manifest["snapshot_id"],
            "rows": manifest["rows"],
        }

    @task(
        outlets=[VALIDATED_DATA],
        doc_md="Run the data contract. Fails without retry and quarantines the batch on bad "
        "data; on success the batch becomes the reference and `shortlist://validated-data` "
        "is emitted.",
    )
    def validate(ingested: dict[str, Any]) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from pipelines import validate as validate_stage

        context = get_current_context()
        params, root = run_params(context)
        with in_project_dir(root), task_logging(log):
            report = validate_stage.run(params, data_dir=ingested["data_dir"])
        log.info("%s", report.summary())
        if not report.success:
            raise AirflowFailException(report.summary().splitlines()[0])
        context["outlet_events"][VALIDATED_DATA].extra = {
            "snapshot_id": report.snapshot_id,
            "data_dir": ingested["data_dir"],
        }
        return {"data_dir": ingested["data_dir"], "snapshot_id": report.snapshot_id}

    @task(
        outlets=[SPLIT_DATA],
        doc_md="Temporal train/validation/test split of the validated snapshot into "
        "`split.dir`; emits `shortlist://split`.",
    )
    def split(validated: dict[str, Any]) -> dict[str, Any]:
        from pipelines import split as split_stage

        context = get_current_context()
        params, root = run_params(context)
        out_dir = where(root, params.split.dir)
        with in_project_dir(root), task_logging(log):
            manifest = split_stage.run(params, data_dir=validated["data_dir"], out_dir=out_dir)
        log.info("split %s into %s: %s", validated["snapshot_id"], out_dir, manifest["counts"])
        context["outlet_events"][SPLIT_DATA].extra = {
            "snapshot_id": validated["snapshot_id"],
            "split_dir": out_dir,
        }
        return {"split_dir": out_dir, "counts": manifest["counts"]}

    split(validate(ingest()))


data_dag = shortlist_data()
