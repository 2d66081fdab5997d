"""Fixtures for DAG tests: one migrated Airflow home per session, params files in tmp."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shortlist.config import Params
from tests.dags.airflow_helpers import migrate


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment of a migrated, isolated Airflow home (SQLite), shared by the session."""
    return migrate(tmp_path_factory.mktemp("airflow-home"))


@pytest.fixture
def params_file(params: Params, tmp_path: Path) -> Path:
    """The test params (every path under tmp_path) written as a params.yaml."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump(), sort_keys=False))
    return path
