"""Shared fixtures: the tiny synthetic dataset, the real ml-100k data, isolated params,
and the real test servers.

Server fixtures (MLflow on SQLite, SeaweedFS S3) live in tests/servers.py and start
on 127.0.0.1 with free ports, once per session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shortlist.config import Params, load_params
from tests.servers import mlflow_server, mlflow_tracking, s3, s3_server  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
ML100K = Path(os.environ.get("SHORTLIST_ML100K", REPO.parent / "shared" / "datasets" / "ml-100k"))

#: The shared tiny dataset: sizes and seed for the project's synthetic generator.
TINY = {"users": 300, "items": 600, "interactions": 20_000, "seed": 0}


def write_tiny_dataset(out: Path) -> str:
    """Write the shared tiny dataset (ids `u0..`, `i0..`) as a dataset directory at `out`.

    Built by the project's own synthetic generator, so it is deterministic, needs no
    download, and has what the contracts need: content features, a few never-interacted
    items, and heavy users whose histories exceed the serving window."""
    from pipelines import synth

    synth.run(Params(), **TINY, out_dir=str(out))
    return str(out)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The shared tiny dataset directory, written once per session (treat it as read-only)."""
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    """The MovieLens 100K directory; tests that need it skip with a reason when absent."""
    if not (ML100K / "u.data").exists():
        pytest.skip(f"MovieLens 100K not found at {ML100K} (set SHORTLIST_ML100K)")
    return ML100K


@pytest.fixture
def params(tmp_path: Path) -> Params:
    """Repository params with every working path moved under tmp_path."""
    base = load_params(REPO / "params.yaml")
    work = tmp_path / "work"
    return base.under(work).with_overrides(
        {"mlflow.tracking_uri": f"sqlite:///{work / 'mlflow.db'}"}
    )


#: Suites that drive whole real processes end to end; `make test-e2e` runs them (CI too).
E2E_PATHS = ("tests/faults/", "tests/ui/", "tests/test_dvc.py", "tests/dags/test_retrain.py")


def pytest_collection_modifyitems(config, items) -> None:
    """Mark the end-to-end suites `e2e`, so `make test` stays quick and CI runs both."""
    for item in items:
        rel = Path(str(item.fspath)).resolve().relative_to(REPO).as_posix()
        if rel.startswith(E2E_PATHS):
            item.add_marker(pytest.mark.e2e)
