"""Every benchmark records where its result came from (benchmarks/provenance.py), and the
benchmarks README refers only to files the repository holds. Nothing here runs a benchmark:
the scripts are imported (their main() is never called)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.name != "provenance.py")
FIELDS = {
    "commit",
    "dirty",
    "command",
    "recorded_at",
    "cpu_model",
    "cpu_count",
    "usable_cores",
    "cpu_probe_seconds",
    "load_average",
    "platform",
    "python",
    "numpy",
    "torch",
    "faiss",
}


@pytest.fixture()
def prov(monkeypatch):
    from benchmarks import provenance

    monkeypatch.setattr(provenance, "PROBE_LOOP", 10_000)  # the probe's shape, not its time
    return provenance


def _head() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_provenance_fields(prov):
    before = _head()
    got = prov.provenance(BENCH / "ann.py", ["--items", "1000", "--set", "a=b c"])
    assert set(got) >= FIELDS
    assert got["commit"] in {before, _head()}  # a commit may land in between
    assert isinstance(got["dirty"], bool)
    assert got["command"] == "python benchmarks/ann.py --items 1000 --set 'a=b c'"
    assert isinstance(got["cpu_model"], str) and got["cpu_model"]
    assert got["cpu_count"] >= 1 and 1 <= got["usable_cores"] <= got["cpu_count"]
    assert isinstance(got["cpu_probe_seconds"], float) and got["cpu_probe_seconds"] >= 0
    assert len(got["load_average"]) == 3
    assert got["python"] == ".".join(map(str, sys.version_info[:3]))
    assert got["numpy"]  # installed here; torch and faiss may be absent elsewhere


def test_provenance_without_probe_and_without_git(prov, monkeypatch, tmp_path):
    monkeypatch.setattr(prov, "REPO", tmp_path)  # not a git repository
    got = prov.provenance(tmp_path / "x.py", [], probe=False)
    assert got["cpu_probe_seconds"] is None
    assert got["commit"] is None and got["dirty"] is None
    assert got["command"] == "python x.py"


def test_dirty_counts_tracked_changes_only(prov, monkeypatch):
    monkeypatch.setattr(prov, "_git", lambda *a: "" if a[0] == "status" else "abc")
    assert prov.git_state() == {"commit": "abc", "dirty": False}
    monkeypatch.setattr(prov, "_git", lambda *a: " M x.py" if a[0] == "status" else "abc")
    assert prov.git_state() == {"commit": "abc", "dirty": True}


def test_one_cpu_probe():
    """The probe lives in provenance.py only: two copies would drift apart."""
    defining = [
        p.name
        for p in BENCH.glob("*.py")
        if any(
            isinstance(n, ast.FunctionDef) and n.name == "cpu_probe"
            for n in ast.walk(ast.parse(p.read_text()))
        )
    ]
    assert defining == ["provenance.py"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_script_records_provenance(script):
    tree = ast.parse(script.read_text())
    calls = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "provenance"
    ]
    assert calls, (
        f"{script.name} does not call provenance(): store "
        '"provenance": provenance(__file__, argv) in the JSON it writes (benchmarks/provenance.py)'
    )
    assert any(
        isinstance(n, ast.Dict)
        and any(isinstance(k, ast.Constant) and k.value == "provenance" for k in n.keys)
        or isinstance(n, ast.Subscript)
        and isinstance(n.slice, ast.Constant)
        and n.slice.value == "provenance"
        for n in ast.walk(tree)
    ), f"{script.name} does not store it under a 'provenance' key"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_script_imports_as_module(script):
    """Imported as benchmarks.<name> (as tests do): module level only, main() not run."""
    module = importlib.import_module(f"benchmarks.{script.stem}")
    assert callable(module.main)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_script_imports_as_script(script, monkeypatch):
    """Loaded the way `python benchmarks/<name>.py` loads it (benchmarks/ first on
    sys.path, no package), under another name so that main() is not run."""
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location(f"_bench_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.main) and callable(module.provenance)


def test_readme_links_exist():
    """Every file the benchmarks README and HISTORY point to is in the repository (the
    plots .gitignore keeps out are not referenced)."""
    for name in ("README.md", "HISTORY.md"):
        text = (BENCH / name).read_text()
        for ref in re.findall(r"\]\(([^)#]+)\)", text) + re.findall(
            r"\bresults/[\w./-]+\.(?:json|md|png)", text
        ):
            if "://" in ref:
                continue
            assert (BENCH / ref).exists() or (REPO / ref).exists(), f"{name}: {ref}"


def test_readme_fits_two_screens():
    assert len((BENCH / "README.md").read_text().splitlines()) <= 100


def test_one_current_result_per_benchmark():
    """benchmarks/results/ holds one current JSON per benchmark; reruns and A/B runs live in
    results/archive/."""
    stems = {p.stem for p in SCRIPTS}
    for f in (BENCH / "results").glob("*.json"):
        assert f.stem in stems, f"{f.name}: not the current result of a benchmark script"
