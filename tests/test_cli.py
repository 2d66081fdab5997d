"""The command-line contract: every command documents itself, and bad input is one line."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from shortlist.cli import build_parser, main

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
COMMANDS = sorted(
    next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
)


def test_the_documented_commands_exist() -> None:
    expected = {
        "ingest", "synth", "validate", "split", "train-towers", "train-ranker", "evaluate",
        "export-recs", "build-bundle", "canary", "promote", "rollback", "status", "serve",
    }  # fmt: skip
    assert expected <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: shortlist {command}")
    assert "--set KEY=VALUE" in out and "--params" in out


def test_top_level_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(c in out for c in COMMANDS)


@pytest.mark.parametrize(
    ("override", "key"),
    [("towers.epochz=3", "towers.epochz"), ("split.test_fraction=abc", "split.test_fraction")],
)
def test_bad_override_exits_1_with_one_line(
    override: str, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["split", str(tmp_path / "data"), "--out", str(tmp_path / "s"), "--set", override])
    assert code == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("shortlist split: ") and key in err
    assert not (tmp_path / "s").exists()  # nothing ran


def test_missing_input_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["split", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "s")])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("shortlist split: ")


def test_console_script_and_light_imports(tmp_path: Path) -> None:
    """The installed `shortlist` entry point works; parsing pulls in no heavy library."""
    proc = subprocess.run(
        [str(BIN / "shortlist"), "ingest", "--source", "csv", "--path", "x", "--out", "y",
         "--set", "nope.key=1"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip() == "shortlist ingest: unknown params key 'nope'"

    probe = (
        "import json, sys; from shortlist.cli import build_parser; "
        "build_parser().parse_args(['split', 'd', '--out', 's']); "
        "print(json.dumps(sorted(m for m in ('torch', 'faiss', 'mlflow', 'great_expectations',"
        " 'pandas', 'airflow') if m in sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(out.stdout) == []
