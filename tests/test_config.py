"""The one typed params object: params.yaml is generated from it, and every mistake names
its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from shortlist.config import WORK_PATHS, ConfigError, Params, load_params, render_params

REPO = Path(__file__).resolve().parents[1]


def _keys(tree: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out |= _keys(value, path + ".") if isinstance(value, dict) else {path}
    return out


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_repo_params_yaml_is_what_config_generates() -> None:
    """A default lives in config.py alone: params.yaml is its rendering, byte for byte."""
    assert (REPO / "params.yaml").read_text() == render_params(), (
        "params.yaml differs from shortlist.config: run `shortlist params --out params.yaml`"
    )
    loaded = load_params(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert _keys(raw) == _keys(Params().model_dump())  # every key spelled out, for DVC
    assert loaded == Params()


def _fields(model: type[BaseModel], prefix: str = "") -> dict[str, FieldInfo]:
    out: dict[str, FieldInfo] = {}
    for name, info in model.model_fields.items():
        out[prefix + name] = info
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            out |= _fields(info.annotation, f"{prefix}{name}.")
    return out


def test_every_setting_has_a_one_line_description() -> None:
    fields = _fields(Params)
    assert len(fields) > 200
    missing = [k for k, info in fields.items() if not (info.description or "").strip()]
    assert missing == [], f"add a docstring under each field in config.py: {missing}"
    long = [k for k, info in fields.items() if "\n" in info.description.strip()]
    assert long == [], f"descriptions are one line: {long}"


def test_render_params_round_trips_any_values(tmp_path: Path) -> None:
    changed = Params().with_overrides(
        {
            "towers.epochs": 3,
            "data.path": "",
            "schedules.data": "@hourly",
            "storage.s3_endpoint_url": "http://127.0.0.1:9000",
            "evaluation.ks": [5, 10],
            "ranker.blend_weights": [],
        }
    )
    assert load_params(write(tmp_path, render_params(changed))) == changed


def test_shortlist_params_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from shortlist.cli import main

    out = tmp_path / "params.yaml"
    out.write_text("not: [valid")  # a stale or broken file does not stop the generator
    assert main(["params", "--out", str(out), "--params", str(out)]) == 0
    assert out.read_text() == render_params()
    assert main(["params", "--check", "--out", str(out)]) == 0
    out.write_text(out.read_text().replace("epochs: 20", "epochs: 21", 1))
    assert main(["params", "--check", "--out", str(out)]) == 1
    assert "shortlist params --out" in capsys.readouterr().err
    assert main(["params", "--set", "towers.epochs=3"]) == 0
    assert load_params(write(tmp_path, capsys.readouterr().out)).towers.epochs == 3


def test_missing_file_means_defaults_only_when_not_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SHORTLIST_PARAMS", raising=False)
    assert load_params() == Params()
    with pytest.raises(ConfigError, match="does not exist"):
        load_params(tmp_path / "nope.yaml")


def test_params_env_variable_selects_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "towers:\n  epochs: 7\n")
    monkeypatch.setenv("SHORTLIST_PARAMS", str(path))
    assert load_params().towers.epochs == 7


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("towerz:\n  epochs: 3\n", "towerz"),
        ("towers:\n  epochz: 3\n", "towers.epochz"),
        ("towers:\n  logq:\n    enabeld: true\n", "towers.logq.enabeld"),
    ],
)
def test_unknown_key_in_file_names_it(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key}: unknown key"):
        load_params(write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("towers:\n  epochs: many\n", "towers.epochs"),
        ("towers:\n  refit_on_validation: perhaps\n", "towers.refit_on_validation"),
        ("split:\n  validation_fraction: 1.5\n", "split.validation_fraction"),
        ("data:\n  source: parquet-dump\n", "data.source"),
        ("evaluation:\n  ks: [10, ten]\n", "evaluation.ks.1"),
        ("towers: 3\n", "towers"),
    ],
)
def test_wrong_type_or_range_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"invalid params: .*{key}:"):
        load_params(write(tmp_path, text))


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_params(write(tmp_path, "- a\n- b\n"))


def _values(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out |= _values(value, path + ".") if isinstance(value, dict) else {path: value}
    return out


def test_under_moves_every_working_path(tmp_path: Path) -> None:
    defaults = _values(Params().model_dump())
    # A new setting whose default lives in the project's work dir must be moved too.
    local = {k for k, v in defaults.items() if isinstance(v, str) and v.startswith(".shortlist")}
    assert local <= set(WORK_PATHS), f"not in WORK_PATHS: {sorted(local - set(WORK_PATHS))}"
    moved = _values(Params().under(tmp_path / "w").model_dump())
    for key, sub in WORK_PATHS.items():
        assert Path(moved[key]) == tmp_path / "w" / sub
    assert moved["towers.epochs"] == defaults["towers.epochs"]


def test_set_overrides_are_typed() -> None:
    base = Params()
    p = base.with_overrides(
        [
            "towers.epochs=3",
            "towers.refit_on_validation=false",
            "towers.learning_rate=1e-2",
            "ranker.hidden_dims=[32, 16]",
            "storage.s3_endpoint_url=http://127.0.0.1:9000",
            "data.path=",
            "towers.logq.alpha=0.5",
        ]
    )
    assert p.towers.epochs == 3 and isinstance(p.towers.epochs, int)
    assert p.towers.refit_on_validation is False
    assert p.towers.learning_rate == pytest.approx(0.01)
    assert p.ranker.hidden_dims == [32, 16]
    assert p.storage.s3_endpoint_url == "http://127.0.0.1:9000"
    assert p.data.path == ""
    assert p.towers.logq.alpha == 0.5
    assert base.towers.epochs == Params().towers.epochs  # the original is untouched
    assert load_params(None, {"towers.epochs": 2}).towers.epochs == 2  # dict form


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("towers.epochz=3", "unknown params key 'towers.epochz'"),
        ("towerz.epochs=3", "unknown params key 'towerz'"),
        ("towers.epochs.x=3", "unknown params key 'towers.epochs.x'"),
        ("towers.epochs=abc", "towers.epochs:"),
        ("towers.epochs=0", "towers.epochs:"),
        ("towers.epochs", "is not key=value"),
    ],
)
def test_bad_override_names_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        Params().with_overrides([override])


def test_shortlist_params_naming_a_missing_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHORTLIST_PARAMS", str(tmp_path / "typo.yaml"))
    with pytest.raises(ConfigError, match=r"typo\.yaml \(from \$SHORTLIST_PARAMS\) does not exist"):
        load_params()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "serving:\n  port: 1\nvalidation:\n  example_rows: 3\nserving:\n  port: 2\n",
            "line 5: key 'serving' repeats line 1",
        ),
        ("serving:\n  port: 1\n  max_k: 5\n  port: 2\n", "line 4: key 'port' repeats line 2"),
    ],
)
def test_a_key_given_twice_is_an_error_naming_file_and_lines(
    tmp_path: Path, text: str, needle: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="params.yaml: " + needle):
        load_params(path)


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"params\.yaml: not valid YAML"):
        load_params(write(tmp_path, "serving: [unclosed\n"))
