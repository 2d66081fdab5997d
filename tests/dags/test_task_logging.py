"""A task log a person can follow: progress bars and stderr as INFO lines while they run."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "dags"))

from _common import _LogStream, task_logging  # noqa: E402


def test_each_progress_redraw_is_one_info_line_as_it_happens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tqdm.auto import tqdm

    log = logging.getLogger("test.progress")
    seen_during: list[str] = []
    with caplog.at_level(logging.INFO, logger="test.progress"), task_logging(log, 0.0):
        bar = tqdm(total=3, desc="train towers")
        for step in range(3):
            time.sleep(0.01)
            bar.update(1)
            bar.set_postfix(loss=f"{3 - step:.3f}")
            seen_during.append(caplog.records[-1].getMessage() if caplog.records else "")
        bar.close()
        print("a warning on stderr", file=sys.stderr)
    messages = [r.getMessage() for r in caplog.records]
    assert all(r.levelno == logging.INFO for r in caplog.records)
    # the bar's state is logged while the loop runs, not as one line at the end
    assert "1/3" in seen_during[0] and "2/3" in seen_during[1]
    final = [m for m in messages if "3/3" in m]
    assert final and "train towers" in final[-1] and "loss=1.000" in final[-1]
    assert "<" in final[-1]  # elapsed<remaining
    assert "a warning on stderr" in messages
    assert "TQDM_MININTERVAL" not in os.environ  # restored afterwards


def test_partial_writes_are_joined_into_lines(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.stream")
    stream = _LogStream(log)
    with caplog.at_level(logging.INFO, logger="test.stream"):
        stream.write("half ")
        stream.write("a line\nnext")
        stream.flush()
    assert [r.getMessage() for r in caplog.records] == ["half a line", "next"]


def test_mlflow_messages_go_through_python_logging() -> None:
    """Under task_logging MLflow adds no stderr handler of its own (Airflow would record
    its INFO lines as ERROR); its records propagate to the task's log handlers."""
    code = (
        "import logging, sys; sys.path.insert(0, 'dags');"
        "from _common import task_logging;"
        "ctx = task_logging(logging.getLogger('t')); ctx.__enter__();"
        "import mlflow; lg = logging.getLogger('mlflow');"
        "print(len(lg.handlers), lg.propagate)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["0", "True"], out.stdout


def test_redraws_are_rate_limited_even_when_tqdm_was_imported_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tqdm.auto import tqdm  # imported before task_logging, as in a warm process

    log = logging.getLogger("test.rate")
    with caplog.at_level(logging.INFO, logger="test.rate"), task_logging(log, 3600.0):
        for _ in tqdm(range(50), desc="evaluate"):
            time.sleep(0.001)
    messages = [r.getMessage() for r in caplog.records]
    assert 1 <= len(messages) <= 3, messages  # the start and the end, not 50 redraws
    assert "50/50" in messages[-1]
