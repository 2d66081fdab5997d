"""The shortlist_data DAG, run for real (`airflow dags test`) on ml-100k.

Also checks the DAG object itself: schedule from params, retries, docs, the asset
outlets, and the ingest → validate → split order.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from shortlist.config import load_params
from tests.dags.airflow_helpers import REPO, dags_test, output

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dag():  # noqa: ANN201
    sys.path.insert(0, str(REPO / "dags"))
    try:
        import shortlist_data

        yield shortlist_data.data_dag
    finally:
        sys.path.remove(str(REPO / "dags"))


def test_dag_definition(dag) -> None:  # noqa: ANN001
    params = load_params(REPO / "params.yaml")
    assert dag.dag_id == "shortlist_data"
    # from params.yaml, at parse time; "@daily" is 0 0 * * * and no past tick runs on unpause
    assert dag.schedule.expression == "0 0 * * *" and params.schedules.data == "@daily"
    assert dag.schedule.run_immediately.total_seconds() == 0
    assert dag.doc_md and "validate" in dag.doc_md
    assert {"shortlist", "data"} <= set(dag.tags)
    assert not dag.catchup
    tasks = {t.task_id: t for t in dag.tasks}
    assert set(tasks) == {"ingest", "validate", "split"}
    assert tasks["validate"].upstream_task_ids == {"ingest"}
    assert tasks["split"].upstream_task_ids == {"validate"}
    for t in tasks.values():
        assert t.retries >= 2 and t.retry_delay.total_seconds() > 0
        assert t.doc_md
    # Airflow normalises an authority-only URI with a trailing slash
    assert [a.uri.rstrip("/") for a in tasks["validate"].outlets] == ["shortlist://validated-data"]
    assert [a.uri.rstrip("/") for a in tasks["split"].outlets] == ["shortlist://split"]


def test_dags_test_on_ml100k(airflow_home, params_file: Path, params, ml100k_path: Path) -> None:  # noqa: ANN001
    conf = {"params_file": str(params_file), "overrides": [f"data.path={ml100k_path}"]}
    proc = dags_test(airflow_home, "shortlist_data", conf)
    assert proc.returncode == 0, output(proc)
    split_dir = Path(params.split.dir)
    for name in ("train.parquet", "validation.parquet", "test.parquet", "split.json"):
        assert (split_dir / name).is_file(), f"{name} missing\n{output(proc)}"
    manifest = json.loads((split_dir / "split.json").read_text())
    assert manifest["snapshot_id"] and manifest["fractions"]["validation"] == 0.1
    counts = manifest["counts"]
    assert counts["train"] + counts["validation"] + counts["test"] == 100_000
    assert (Path(params.validation.reference_dir) / "snapshot.json").is_file()
    assert not Path(params.validation.quarantine_dir).exists() or not any(
        Path(params.validation.quarantine_dir).iterdir()
    )


def test_failed_validation_stops_the_run(
    airflow_home, params_file: Path, params, ml100k_path: Path
) -> None:  # noqa: ANN001
    # every ml-100k timestamp (1997-98) is older than this minimum: the contract fails
    conf = {
        "params_file": str(params_file),
        "overrides": [f"data.path={ml100k_path}", "validation.min_timestamp=1600000000"],
    }
    proc = dags_test(airflow_home, "shortlist_data", conf, "2024-01-03T00:00:00+00:00")
    assert proc.returncode != 0, output(proc)
    assert not Path(params.split.dir).exists(), "split ran after a failed validation"
    quarantined = list(Path(params.validation.quarantine_dir).iterdir())
    assert len(quarantined) == 1, output(proc)
