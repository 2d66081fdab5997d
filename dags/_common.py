"""What every Shortlist DAG shares: params at parse time, params per run, retry policy.

Parse time stays light: only shortlist.config (pydantic + yaml) is imported here; the
stages in pipelines/ are imported inside tasks, each inside `task_logging()` so that a
person can follow it in the Airflow task log. Paths in params.yaml are relative to the
project directory (the params file's directory), exactly as for the CLI and DVC, so each
task runs its stage from there.

A run can be pointed elsewhere with its conf, e.g.
    {"params_file": "/path/to/params.yaml", "overrides": ["data.path=/data/ml-100k"]}
which is how the tests keep every output in a temporary directory.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from shortlist.config import PARAMS_ENV, Params, load_params

PROJECT_DIR = Path(__file__).resolve().parents[1]
# No start date: with one, unpausing a DAG ("Unpause on trigger" in the UI) makes the
# scheduler create a run for the latest past cron tick at once, which then holds the
# only active-run slot ahead of the run the person just triggered. Without one, and
# with `cron_schedule`, the first scheduled run waits for the next tick.
START_DATE = None
# How often a long stage's progress line (tqdm: step, elapsed<ETA, loss, metric) is
# written to the task log.
PROGRESS_INTERVAL_S = 30.0

_CRON_WORDS = {
    "@hourly": "hourly, at minute 0",
    "@daily": "daily at 00:00 UTC",
    "@weekly": "weekly, Sunday 00:00 UTC",
    "@monthly": "monthly, on the 1st at 00:00 UTC",
}

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
        # null allowed: the trigger form then shows the field as optional, which it is
        "overrides": Param([], type=["null", "array"], description=RUN_PARAMS_DOC["overrides"]),
    }


def cron_schedule(expression: str):
    """A cron schedule (UTC) whose first run waits for the next tick, never a past one.

    `run_immediately=False` is not enough: Airflow 3.3 still runs the past tick when it
    lies within a tenth of the interval (16.8 h for @weekly); a zero timedelta never does.
    """
    from airflow.sdk import CronTriggerTimetable

    return CronTriggerTimetable(expression, timezone="UTC", run_immediately=timedelta(0))


def describe_cron(expression: str) -> str:
    """The schedule in words for DAG descriptions, e.g. "weekly, Sunday 00:00 UTC"."""
    return _CRON_WORDS.get(expression.strip(), f"cron `{expression}` (UTC)")


class _LogStream(io.TextIOBase):
    """A text stream that writes each line, and each redraw of a progress bar (text after
    a carriage return), to a logger at INFO. Airflow records a task's stderr as ERROR and
    keeps a carriage-return progress bar as one line until the task ends; this does not."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._tail = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        parts = re.split(r"[\r\n]", self._tail + text)
        self._tail = parts.pop()
        if text.startswith("\r") and self._tail.strip():  # a bar's current state
            parts.append(self._tail)
            self._tail = ""
        for part in parts:
            if part.strip():
                self._logger.info("%s", part.strip())
        return len(text)

    def flush(self) -> None:
        if self._tail.strip():
            self._logger.info("%s", self._tail.strip())
        self._tail = ""


def _route_mlflow_logs() -> None:
    """MLflow's own stderr handler makes its INFO lines ERROR in the task log: let its
    records go through Python logging (Airflow's task log) at their own level."""
    mlflow_log = logging.getLogger("mlflow")
    for handler in list(mlflow_log.handlers):
        mlflow_log.removeHandler(handler)
    mlflow_log.propagate = True


@contextlib.contextmanager
def task_logging(logger: logging.Logger, interval_s: float = PROGRESS_INTERVAL_S) -> Iterator[None]:
    """Run a stage so the task log is readable while it runs: progress bars (tqdm) redraw
    at most every `interval_s` seconds, each redraw one INFO line (step, elapsed<ETA and
    the loss/metric the stage shows); stderr lines are INFO, not ERROR; MLflow's messages
    keep their level. tqdm's defaults are set on its class for the duration (its
    TQDM_* variables are read once, at import, so they cannot be relied on here);
    tqdm, the environment and stderr are restored afterwards."""
    import tqdm.std

    original = tqdm.std.tqdm.__init__

    def rare_redraws(bar: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("mininterval", interval_s)
        kwargs.setdefault("maxinterval", max(interval_s, 10.0))
        original(bar, *args, **kwargs)

    saved = os.environ.get("MLFLOW_CONFIGURE_LOGGING")
    os.environ["MLFLOW_CONFIGURE_LOGGING"] = "false"
    if "mlflow" in sys.modules:
        _route_mlflow_logs()
    stream = _LogStream(logger)
    tqdm.std.tqdm.__init__ = rare_redraws  # subclasses (tqdm.auto) call it too
    try:
        with contextlib.redirect_stderr(stream):
            yield
    finally:
        tqdm.std.tqdm.__init__ = original
        stream.flush()
        if saved is None:
            os.environ.pop("MLFLOW_CONFIGURE_LOGGING", None)
        else:
            os.environ["MLFLOW_CONFIGURE_LOGGING"] = saved


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
