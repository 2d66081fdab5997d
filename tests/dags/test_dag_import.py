"""Every file in dags/ parses without error, fast, and without heavy imports.

Parsing happens in a fresh interpreter (as in Airflow's DAG processor) after Airflow
itself is imported, so the measured time is what each DAG file adds to every parse.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dags.airflow_helpers import DAGS, airflow_env

MAX_PARSE_SECONDS = 2.0
HEAVY = ("torch", "faiss", "mlflow", "great_expectations", "pandas", "sklearn", "pipelines")

PROBE = r"""
import json, sys, time
import airflow.sdk
from airflow.dag_processing.dagbag import DagBag
from airflow.serialization.encoders import coerce_to_core_timetable
from airflow.timetables.base import TimeRestriction
heavy = {HEAVY!r}
before = {{m for m in heavy if m in sys.modules}}
bag = DagBag(dag_folder={dags!r})

def first_run(d):
    # what the scheduler computes right after a person unpauses a DAG that never ran
    info = coerce_to_core_timetable(d.timetable).next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=d.start_date, latest=None, catchup=d.catchup),
    )
    return None if info is None else info.run_after.timestamp() - time.time()

print(json.dumps({{
    "errors": bag.import_errors,
    "stats": {{s.file: s.duration.total_seconds() for s in bag.dagbag_stats}},
    "dags": {{d.dag_id: {{"fileloc": d.fileloc, "tags": sorted(d.tags),
              "tasks": [t.task_id for t in d.tasks], "description": d.description,
              "first_run_in_s": first_run(d), "doc": d.doc_md or "",
              "params": {{k: d.params.get_param(k).schema for k in d.params}}}}
             for d in bag.dags.values()}},
    "heavy_added": sorted({{m for m in heavy if m in sys.modules}} - before),
}}))
"""


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("airflow-parse")
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(HEAVY=HEAVY, dags=str(DAGS))],
        env=airflow_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def dag_files() -> list[str]:
    ignored = {"_common.py"}  # helpers, listed in dags/.airflowignore
    return sorted(p.name for p in DAGS.glob("*.py") if p.name not in ignored)


def test_no_import_errors(parsed: dict) -> None:
    assert parsed["errors"] == {}


def test_every_dag_file_parses_quickly(parsed: dict) -> None:
    files = dag_files()
    assert "shortlist_data.py" in files
    assert set(parsed["stats"]) == set(files), parsed["stats"]
    slow = {f: s for f, s in parsed["stats"].items() if s >= MAX_PARSE_SECONDS}
    assert slow == {}, f"DAG files slower than {MAX_PARSE_SECONDS} s to parse: {slow}"


def test_dag_files_import_nothing_heavy(parsed: dict) -> None:
    assert parsed["heavy_added"] == []


def test_shortlist_data_shape(parsed: dict) -> None:
    dag = parsed["dags"]["shortlist_data"]
    assert Path(dag["fileloc"]).name == "shortlist_data.py"
    assert set(dag["tasks"]) == {"ingest", "validate", "split"}
    assert "shortlist" in dag["tags"]


def test_shortlist_feedback_shape(parsed: dict) -> None:
    dag = parsed["dags"]["shortlist_feedback"]
    assert Path(dag["fileloc"]).name == "shortlist_feedback.py"
    assert set(dag["tasks"]) == {"join", "land"}
    assert "hourly, at minute 0" in dag["description"]
    assert "feedback" in dag["tags"]


def test_unpausing_never_starts_a_run_for_a_past_tick(parsed: dict) -> None:
    """ "Unpause on trigger" in the UI must not queue a scheduled run ahead of the manual one."""
    assert set(parsed["dags"]) == {
        "shortlist_data",
        "shortlist_retrain",
        "shortlist_reembed",
        "shortlist_canary",
        "shortlist_feedback",
    }
    for dag_id, dag in parsed["dags"].items():
        assert dag["first_run_in_s"] is None or dag["first_run_in_s"] > 0, (dag_id, dag)


def test_retrain_dag_explains_itself(parsed: dict) -> None:
    dag = parsed["dags"]["shortlist_retrain"]
    assert "weekly, Sunday 00:00 UTC" in dag["description"]
    for words in ("Queued or stuck runs", "Mark as failed", "add `champion`", "Schedule"):
        assert words in dag["doc"], words
    # both run-level fields may be left empty in the trigger form
    for name in ("params_file", "overrides"):
        assert "null" in dag["params"][name]["type"], (name, dag["params"][name])
