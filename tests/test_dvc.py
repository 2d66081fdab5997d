"""The repository's dvc.yaml, reproduced for real on ml-100k.

First in a git-less scratch repo (`dvc init --no-scm`, data.path pointed at the ml-100k
fixture): a second repro does nothing, a split-only param change reruns split alone.
Then as a user meets it: a fresh `git clone` of the repository, `dvc repro` with no edit
(the embedded default data, ml-100k from ../shared beside the clone), then the whole
pipeline with a small model, and `dvc metrics show`, `dvc params diff` and `dvc plots
show` giving real output. DVC's global/site config and cache dirs stay inside tmp.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shortlist.config import load_params

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def dvc_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHORTLIST_", "MLFLOW_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # stages call `shortlist`
        DVC_NO_ANALYTICS="1",
        XDG_CONFIG_HOME=str(tmp_path / "xdg-config"),
        XDG_CACHE_HOME=str(tmp_path / "xdg-cache"),
        DVC_GLOBAL_CONFIG_DIR=str(tmp_path / "dvc-global"),
        DVC_SYSTEM_CONFIG_DIR=str(tmp_path / "dvc-system"),
        DVC_SITE_CACHE_DIR=str(tmp_path / "dvc-site-cache"),
    )
    return env


def dvc(workdir: Path, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(
        [str(BIN / "dvc"), *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed ({proc.returncode}):\n{out}"
    return out


def set_params(path: Path, overrides: dict[str, Any]) -> None:
    """Like `--set key=value`: validated against the schema, written back to the file."""
    params = load_params(path, overrides)
    raw = yaml.safe_load(path.read_text())
    for key, _ in overrides.items():
        node, parts = raw, key.split(".")
        for part in parts[:-1]:
            node = node[part]
        value: Any = params
        for part in parts:
            value = getattr(value, part)
        node[parts[-1]] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w-]+)'", output))


@pytest.fixture
def dvc_repo(tmp_path: Path, ml100k_path: Path) -> tuple[Path, dict[str, str]]:
    work = tmp_path / "repo"
    work.mkdir()
    shutil.copy(REPO / "dvc.yaml", work / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", work / "params.yaml")
    env = dvc_env(tmp_path)
    dvc(work, env, "init", "--no-scm", "-q")
    set_params(work / "params.yaml", {"data.path": str(ml100k_path)})
    return work, env


def _only_data_stages(work: Path) -> None:
    """Later issues append training stages; this test reproduces the data stages only."""
    spec = yaml.safe_load((work / "dvc.yaml").read_text())
    spec["stages"] = {k: v for k, v in spec["stages"].items() if k in DATA_STAGES}
    (work / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


DATA_STAGES = ("ingest", "validate", "split")


def test_repo_dvc_yaml_defines_the_data_stages_in_order() -> None:
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    names = list(spec["stages"])
    assert names[:3] == list(DATA_STAGES)
    for name in DATA_STAGES:
        cmd = spec["stages"][name]["cmd"].lstrip()
        # ingest is the demo's step: the embedded default when data.path is empty
        expected = "python -m shortlist.demo --steps ingest" if name == "ingest" else name
        assert cmd.startswith(expected if name == "ingest" else f"shortlist {expected}"), cmd
        assert spec["stages"][name]["params"], name


def test_repro_then_noop_then_split_only(dvc_repo: tuple[Path, dict[str, str]]) -> None:
    work, env = dvc_repo
    _only_data_stages(work)

    first = dvc(work, env, "repro")
    assert ran(first) == set(DATA_STAGES), first
    split_dir = work / ".shortlist" / "split"
    for name in ("train.parquet", "validation.parquet", "test.parquet", "split.json"):
        assert (split_dir / name).is_file(), name
    assert (work / ".shortlist" / "validation.txt").read_text().startswith("validation PASSED")
    assert (work / ".shortlist" / "reference" / "snapshot.json").is_file()  # side effect
    assert (work / "dvc.lock").is_file()

    second = dvc(work, env, "repro")
    assert ran(second) == set(), second
    for name in DATA_STAGES:
        assert re.search(rf"Stage '{name}' didn't change", second), second

    before = (split_dir / "split.json").read_text()
    set_params(work / "params.yaml", {"split.validation_fraction": 0.2})
    third = dvc(work, env, "repro")
    assert ran(third) == {"split"}, third
    assert (split_dir / "split.json").read_text() != before
    assert '"validation": 0.2' in (split_dir / "split.json").read_text()
    assert "up to date" in dvc(work, env, "status").lower()


FAST_MODEL = {
    "towers.epochs": 1,
    "towers.embedding_dim": 16,
    "towers.id_dim": 16,
    "towers.hidden_dim": 32,
    "towers.history_len": 10,
    "towers.batch_size": 4096,
    "towers.mixed_negatives": 0,
    "towers.refit_on_validation": False,
    "ranker.epochs": 1,
    "evaluation.baselines": ["most_popular"],
    "canary.users": 100,
}


@pytest.fixture
def fresh_clone(tmp_path: Path, ml100k_path: Path) -> tuple[Path, dict[str, str]]:
    """`git clone` of the committed repository, with ../shared/datasets/ml-100k beside it
    as in the project's own checkout."""
    shared = tmp_path / "shared" / "datasets"
    shared.mkdir(parents=True)
    (shared / "ml-100k").symlink_to(ml100k_path.resolve())
    work = tmp_path / "repo"
    env = dvc_env(tmp_path)
    env.update(GIT_CONFIG_NOSYSTEM="1", HOME=str(tmp_path))
    subprocess.run(["git", "clone", "-q", str(REPO), str(work)], check=True, env=env, timeout=300)
    return work, env


def test_fresh_clone_repro_without_edits_then_metrics_params_plots(
    fresh_clone: tuple[Path, dict[str, str]],
) -> None:
    """ingest → … → bundle (+ canary): no edit for the data, a tiny model for the rest;
    a staged bundle, never a pointer flip; DVC's reports have real content."""
    import json

    work, env = fresh_clone
    data = dvc(work, env, "repro", "split")  # params.yaml exactly as committed
    assert ran(data) == set(DATA_STAGES), data
    snapshot = json.loads((work / ".shortlist" / "data" / "snapshot.json").read_text())
    assert snapshot["source"] == "movielens-100k", snapshot

    set_params(work / "params.yaml", FAST_MODEL)
    first = dvc(work, env, "repro")
    assert ran(first) == {"train_towers", "evaluate", "train_ranker", "bundle"}, first
    staged = work / ".shortlist" / "staging" / "dvc-root"
    manifests = list(staged.glob("*/manifest.json"))
    assert len(manifests) == 1, list(staged.rglob("*"))
    canary = json.loads((work / ".shortlist" / "canary" / "canary.json").read_text())
    assert canary["passed"] is True
    assert not (staged / "live.json").exists(), "dvc repro must never flip a live pointer"
    assert not (work / ".shortlist" / "bundles").exists(), "dvc repro wrote to the live root"

    metrics = dvc(work, env, "metrics", "show")
    assert re.search(r"eval/metrics\.json", metrics) and "recall@20" in metrics, metrics
    changed = dvc(work, env, "params", "diff")
    assert "towers.epochs" in changed and "evaluation.baselines" in changed, changed
    plots = dvc(work, env, "plots", "show", "-o", str(work / "plots-out"))
    page = work / "plots-out" / "index.html"
    assert page.is_file(), plots
    assert "two_tower" in page.read_text() and "most_popular" in page.read_text()

    assert ran(dvc(work, env, "repro")) == set()
    set_params(work / "params.yaml", {"canary.users": 50})
    assert ran(dvc(work, env, "repro")) == {"bundle"}
