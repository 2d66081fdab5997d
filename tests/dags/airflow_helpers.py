"""Running the real Airflow CLI against the repository's dags/ from tests.

Every call gets its own AIRFLOW_HOME (SQLite metadata DB, logs) under a temporary
directory, examples off, and an environment stripped of the developer's AIRFLOW_*,
SHORTLIST_* and MLFLOW_* variables, so a test run never touches a real deployment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
BIN = Path(sys.executable).parent
LOGICAL_DATE = "2024-01-02T00:00:00+00:00"


def airflow_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for an isolated Airflow: home, DAGs folder, no examples, few workers."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW_", "AIRFLOW__", "SHORTLIST_", "MLFLOW_"))
    }
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__PARALLELISM="2",
        AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT="120",
        AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
        **(extra or {}),
    )
    return env


def airflow(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `airflow ARGS...` from the venv; never raises on a non-zero exit."""
    return subprocess.run(
        [str(BIN / "airflow"), *args],
        env=env,
        cwd=env["AIRFLOW_HOME"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def migrate(home: Path) -> dict[str, str]:
    """Create the metadata DB in `home`; returns the environment to use with it."""
    home.mkdir(parents=True, exist_ok=True)
    env = airflow_env(home)
    proc = airflow(env, "db", "migrate", timeout=300)
    assert proc.returncode == 0, f"airflow db migrate failed:\n{proc.stdout}\n{proc.stderr}"
    return env


def dags_test(
    env: dict[str, str], dag_id: str, conf: dict[str, Any], logical_date: str = LOGICAL_DATE
) -> subprocess.CompletedProcess:
    """`airflow dags test DAG DATE -c CONF`: one real run, in-process, no scheduler."""
    return airflow(env, "dags", "test", dag_id, logical_date, "-c", json.dumps(conf))


def output(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"
