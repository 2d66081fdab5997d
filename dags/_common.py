"""What every Shortlist DAG shares: params at parse time, params per run, retry policy.

Parse time stays light: only shortlist.config (pydantic + yaml) is imported here; the
stages in pipelines/ are imported inside tasks. Paths in params.yaml are relative to the
project directory (the params file's directory), exactly as for the CLI and DVC, so each
task runs its stage from there.

A run can be pointed elsewhere with its conf, e.g.
    {"params_file": "/path/to/params.yaml", "overrides": ["data.path=/data/ml-100k"]}
which is how the tests keep every output in a temporary directory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from shortlist.config import PARAMS_ENV, Params, load_params

PROJECT_DIR = Path(__file__).resolve().parents[1]
START_DATE = datetime(2024, 1, 1)

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "shortlist",
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=20),
}

# Run-level knobs shown in the trigger form; a run's conf overrides them.
RUN_PARAMS_DOC = {
    "params_file": "params.yaml to use (default: $SHORTLIST_PARAMS or the project's)",
    "overrides": "list of 'section.key=value' overrides, as `shortlist --set`",
}


def run_params_spec() -> dict[str, Any]:
    """The DAG-level `params` every Shortlist DAG takes (shown in the trigger form)."""
    from airflow.sdk import Param

    return {
        "params_file": Param(
            None, type=["null", "string"], description=RUN_PARAMS_DOC["params_file"]
        ),
        "overrides": Param([], type="array", description=RUN_PARAMS_DOC["overrides"]),
    }


def default_params_file() -> Path:
    return Path(os.environ.get(PARAMS_ENV) or PROJECT_DIR / "params.yaml")


def parse_time_params() -> Params:
    """Params for DAG-level settings (schedules); cheap enough to load at every parse."""
    return load_params(default_params_file())


def run_params(context: Any) -> tuple[Params, Path]:
    """The params of this run (conf over defaults) and the directory paths are relative to."""
    conf_params = context["params"]
    path = Path(conf_params.get("params_file") or default_params_file()).resolve()
    overrides = list(conf_params.get("overrides") or [])
    return load_params(path, overrides), path.parent


@contextlib.contextmanager
def in_project_dir(project_dir: Path) -> Iterator[None]:
    """Run a stage from the project directory, so relative params paths mean the same
    thing as for `shortlist` and `dvc repro`; the previous directory is restored."""
    before = Path.cwd()
    os.chdir(project_dir)
    try:
        yield
    finally:
        os.chdir(before)


def where(root: Path, path: str) -> str:
    """A params path as an absolute location (s3:// and absolute paths unchanged)."""
    if path.startswith("s3://") or Path(path).is_absolute():
        return path
    return str(root / path)


def run_key(context: Any) -> str:
    """This run's key for its outputs: the end of its data interval (or its logical date).

    A retry or a cleared re-run of the same interval writes to the same place, which is
    what makes each task idempotent; asset-triggered runs without an interval fall back
    to the run id.
    """
    stamp = context.get("data_interval_end") or context.get("logical_date")
    if stamp is not None:
        return stamp.strftime("%Y%m%dT%H%M%S")
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in context["run_id"])
