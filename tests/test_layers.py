"""Imports point down the layers (DESIGN.md): a module never imports from a layer above.

config/storage/data -> models/index/ranking/eval -> bundle -> serving -> release
(canary, blessing, registry) -> stages (`pipelines/`) -> entry points (CLI, demo,
stack, DAGs). Every import counts, also those inside functions (they are how heavy
modules stay out of DAG parse time, not a way around the layers).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS: list[tuple[str, ...]] = [
    ("config", "storage", "errors", "data", "tracking"),
    ("models", "index", "ranking", "eval", "validation", "tuning"),
    ("bundle",),
    ("serving",),
    ("canary", "blessing", "registry", "registry_model", "review"),
    ("pipelines",),
    ("cli", "demo", "stack", "simulate", "cluster", "__main__", "dags"),
]


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] == "shortlist":
        parts = parts[1:]
    if not parts:
        return None
    for i, names in enumerate(LAYERS):
        if parts[0] in names:
            return i
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[1:] if rel.parts[0] == "src" else rel.parts
    if parts[0] == "dags":
        return "dags"
    return ".".join(parts)


def imported(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
            if node.module in ("shortlist", "pipelines"):
                out += [f"{node.module}.{a.name}" for a in node.names]
    return [n for n in out if n.split(".")[0] in ("shortlist", "pipelines")]


def upward_imports(sources: dict[Path, str]) -> list[str]:
    """Every import in `sources` (path -> code) of a module from a higher layer."""
    found = []
    for path, code in sources.items():
        me = layer_of(module_name(path))
        if me is None:
            continue
        for name in imported(ast.parse(code)):
            target = layer_of(name)
            if target is not None and target > me:
                found.append(f"{path.relative_to(REPO)} imports {name} (layer {target} > {me})")
    return found


def project_files() -> list[Path]:
    return sorted(
        [*(REPO / "src" / "shortlist").rglob("*.py"), *(REPO / "pipelines").glob("*.py")]
        + [*(REPO / "dags").glob("*.py")]
    )


def test_every_module_has_a_layer():
    unplaced = [
        str(p.relative_to(REPO))
        for p in project_files()
        if layer_of(module_name(p)) is None and p.name != "__init__.py"
    ]
    assert not unplaced, f"modules outside every layer (add them to LAYERS): {unplaced}"


def test_no_import_points_up_a_layer():
    assert upward_imports({p: p.read_text() for p in project_files()}) == []


@pytest.mark.parametrize(
    ("where", "line"),
    [
        ("src/shortlist/bundle/added.py", "from shortlist.serving.recommend import recommend"),
        ("src/shortlist/models/added.py", "def f():\n    import shortlist.registry\n"),
        ("src/shortlist/data/added.py", "from pipelines import split"),
    ],
)
def test_the_contract_fails_on_an_upward_import(where, line):
    assert upward_imports({REPO / where: line}) != []
