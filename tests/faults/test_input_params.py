"""Bad params files through the real CLI: a one-line error naming the file, exit 1.

Reproductions: `SHORTLIST_PARAMS` naming a missing file ran silently on defaults; a
section given twice in params.yaml silently used the last one."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.servers import binary


def _shortlist(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(binary("shortlist")), *args],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_shortlist_params_naming_a_missing_file_stops_the_command(tmp_path):
    missing = tmp_path / "params-typo.yaml"
    proc = _shortlist(tmp_path, {"SHORTLIST_PARAMS": str(missing)}, "status", "--json")
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.strip() == (
        f"shortlist status: params file {missing} (from $SHORTLIST_PARAMS) does not exist"
    )


def test_a_duplicated_section_stops_the_command(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        "serving:\n  port: 8001\nvalidation:\n  example_rows: 3\nserving:\n  port: 8002\n"
    )
    proc = _shortlist(tmp_path, {"SHORTLIST_PARAMS": str(params)}, "status", "--json")
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.strip() == (
        f"shortlist status: {params}: line 5: key 'serving' repeats line 1 "
        "(each key may appear once per section)"
    )
