"""Stage `split` (and `synth` feeding it): the directory layout `load_split` reads."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines import ingest, split, synth
from shortlist.cli import main
from shortlist.data import schema
from shortlist.data.split_io import COLD, load_split
from shortlist.errors import ShortlistError


@pytest.fixture(scope="module")
def ml100k_dir(ml100k_path: Path, tmp_path_factory) -> Path:
    from shortlist.config import Params

    out = tmp_path_factory.mktemp("ml100k")
    ingest.run(Params(), source="movielens-100k", path=str(ml100k_path), out_dir=str(out))
    return out


def test_global_split_of_ml100k(params, ml100k_dir: Path, tmp_path: Path):
    out = tmp_path / "split"
    p = params.with_overrides({"split.mode": "global"})
    manifest = split.run(p, data_dir=str(ml100k_dir), out_dir=str(out))
    counts = manifest["counts"]
    assert counts["train"] + counts["validation"] + counts["test"] == 100_000
    assert counts["users"] == 943 and counts["items"] == 1682
    assert abs(counts["test"] - 10_000) < 200 and abs(counts["validation"] - 10_000) < 200
    snap = json.loads((ml100k_dir / schema.SNAPSHOT).read_text())
    assert manifest["snapshot_id"] == snap["snapshot_id"]
    assert manifest["mode"] == "global"
    assert manifest["fractions"] == {"validation": 0.1, "test": 0.1}
    assert json.loads((out / schema.SPLIT_MANIFEST).read_text())["counts"] == counts

    s = load_split(str(out))
    assert s.snapshot_id == snap["snapshot_id"]
    t1, t2 = manifest["cutoffs"]["validation_start"], manifest["cutoffs"]["test_start"]
    assert s.train["timestamp"].max() < t1 <= s.validation["timestamp"].min()
    assert s.validation["timestamp"].max() < t2 <= s.test["timestamp"].min()
    assert len(s.items) == 1682 and len(s.users) == 943
    # items/users are the snapshot's own bytes
    assert (out / schema.ITEMS).read_bytes() == (ml100k_dir / schema.ITEMS).read_bytes()
    for part in ("validation", "test"):
        assert s.cold_users(part) == set(getattr(s, part)["user_id"]) - set(s.train["user_id"])
        assert s.cold_items(part) == set(getattr(s, part)["item_id"]) - set(s.train["item_id"])
    assert len(s.cold_users("test")) > 0  # ml-100k users keep joining until the end
    assert manifest["cold"]["test"]["users"] == len(s.cold_users("test"))
    for name in (schema.TRAIN, schema.VALIDATION, schema.TEST):
        assert pq.read_schema(out / name).equals(schema.INTERACTIONS_SCHEMA)


def test_per_user_split_of_ml100k(params, ml100k_dir: Path, tmp_path: Path):
    p = params.with_overrides({"split.mode": "per_user", "split.min_user_interactions": 20})
    manifest = split.run(p, data_dir=str(ml100k_dir), out_dir=str(tmp_path / "s"))
    s = load_split(str(tmp_path / "s"))
    # every ml-100k user has >= 20 ratings, so everyone appears in every part
    assert s.test["user_id"].nunique() == 943 and s.validation["user_id"].nunique() == 943
    assert len(s.cold_users("test")) == 0
    assert manifest["cutoffs"] == {} and manifest["min_user_interactions"] == 20
    sizes = (
        s.train.groupby("user_id").size()
        + s.validation.groupby("user_id").size()
        + s.test.groupby("user_id").size()
    )
    expect = (sizes * 0.1 + 0.5).astype(int).clip(lower=1)
    assert (s.test.groupby("user_id").size() == expect).all()


def test_auto_split_of_ml100k_holds_out_each_users_latest(params, ml100k_dir: Path, tmp_path):
    """A global time cut would leave ml-100k's validation to the ~100 users active at the
    end; `auto` sees that and holds out every user's most recent interactions instead."""
    manifest = split.run(params, data_dir=str(ml100k_dir), out_dir=str(tmp_path / "s"))
    assert params.split.mode == "auto"
    assert manifest["mode"] == "per_user" and manifest["timestamps"] == "real"
    assert "would put only" in manifest["rule"] and "943 users" in manifest["rule"]
    assert manifest["parts"]["validation"]["users"] == 943
    assert manifest["shares"]["validation"]["cold_users"] == 0.0
    s = load_split(str(tmp_path / "s"))
    last_train = s.train.groupby("user_id")["timestamp"].max()
    first_val = s.validation.groupby("user_id")["timestamp"].min()
    assert (last_train.reindex(first_val.index) <= first_val).all()  # per user, in time order


def test_auto_split_without_real_time_is_random_per_user(params, ml100k_dir, tmp_path: Path):
    """Row order is not time: the holdout is random per user, seeded, and the parts are
    put in time order so later stages see validation after train."""
    full = pd.read_parquet(ml100k_dir / schema.INTERACTIONS)
    shuffled = full.drop(columns="timestamp").sample(frac=1.0, random_state=1)
    csv = tmp_path / "plays.csv"
    shuffled.to_csv(csv, index=False)
    data = tmp_path / "data"
    ingest.run(params, source="csv", path=str(csv), out_dir=str(data))
    assert json.loads((data / schema.SNAPSHOT).read_text())["timestamps"] == "synthetic"

    manifest = split.run(params, data_dir=str(data), out_dir=str(tmp_path / "a"))
    assert manifest["mode"] == "random" and manifest["timestamps"] == "synthetic"
    a = load_split(str(tmp_path / "a"))
    assert a.validation["user_id"].nunique() == 943
    assert a.train["timestamp"].max() < a.validation["timestamp"].min()
    assert a.validation["timestamp"].max() < a.test["timestamp"].min()
    # The held-out items are not each user's last rows of the file (they were random).
    by_row = split.run(
        params.with_overrides({"split.mode": "per_user"}),
        data_dir=str(data),
        out_dir=str(tmp_path / "b"),
    )
    assert by_row["mode"] == "per_user"
    b = load_split(str(tmp_path / "b"))
    overlap = len(a.test.merge(b.test, on=["user_id", "item_id"])) / len(a.test)
    assert overlap < 0.3
    # Seeded: the same seed gives the same parts, another seed other parts.
    split.run(params, data_dir=str(data), out_dir=str(tmp_path / "c"))
    pd.testing.assert_frame_equal(load_split(str(tmp_path / "c")).test, a.test)
    other = params.with_overrides({"project.seed": 7})
    split.run(other, data_dir=str(data), out_dir=str(tmp_path / "d"))
    assert not load_split(str(tmp_path / "d")).test.equals(a.test)


def test_split_too_small_to_decide_on_is_an_error(params, ml100k_dir: Path, tmp_path: Path):
    p = params.with_overrides({"split.mode": "global", "split.min_validation_users": 200})
    with pytest.raises(ShortlistError) as err:
        split.run(p, data_dir=str(ml100k_dir), out_dir=str(tmp_path / "s"))
    msg = str(err.value)
    assert "validation has" in msg and "users" in msg and "at least 200" in msg
    assert not (tmp_path / "s" / schema.SPLIT_MANIFEST).exists()  # nothing half-written


def test_synth_then_split_without_test_via_cli(params, tmp_path: Path):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(json.dumps(params.model_dump()))
    data, out = tmp_path / "data", tmp_path / "split"
    common = ["--params", str(params_file), "--set", "synth.chunk_rows=4000"]
    argv = ["synth", "--users", "300", "--items", "400", "--interactions", "10000"]
    assert main([*argv, "--seed", "5", "--out", str(data), *common]) == 0
    snap = json.loads((data / schema.SNAPSHOT).read_text())
    assert snap["source"] == "synth" and snap["synth"]["seed"] == 5
    assert snap["rows"] == {schema.ITEMS: 400, schema.USERS: 300, schema.INTERACTIONS: 10_000}
    assert pq.ParquetFile(data / schema.INTERACTIONS).metadata.num_row_groups == 3
    again = synth.run(
        params.with_overrides({"synth.chunk_rows": 4000}),
        users=300,
        items=400,
        interactions=10_000,
        seed=5,
        out_dir=str(tmp_path / "again"),
    )
    assert again["snapshot_id"] == snap["snapshot_id"]

    code = main(["split", str(data), "--out", str(out), *common, "--set", "split.test_fraction=0"])
    assert code == 0
    s = load_split(str(out))
    assert len(s.test) == 0 and s.test.columns.tolist() == list(schema.INTERACTIONS_SCHEMA.names)
    assert pq.read_schema(out / schema.TEST).equals(schema.INTERACTIONS_SCHEMA)
    assert len(s.train) + len(s.validation) == 10_000
    assert s.cold_items("test") == set() and pq.read_schema(out / COLD).names == [
        "kind",
        "id",
        "part",
    ]
    assert s.manifest["counts"]["test"] == 0 and s.manifest["cutoffs"]["test_start"] is None


@pytest.mark.servers
def test_synth_and_split_on_s3(params, s3, tmp_path: Path):
    """Synth writes locally then uploads; split reads and writes s3:// directly."""
    bucket = s3.new_bucket("datasplit")
    data, out = f"s3://{bucket}/data", f"s3://{bucket}/split"
    p = params.with_overrides({"synth.chunk_rows": 3000})
    manifest = synth.run(p, users=200, items=300, interactions=6000, seed=2, out_dir=data)
    local = synth.run(p, users=200, items=300, interactions=6000, seed=2, out_dir=str(tmp_path))
    assert manifest["checksums"] == local["checksums"]
    assert not list(Path(p.project.work_dir).glob("synth-*"))  # temporary dir removed
    counts = split.run(p, data_dir=data, out_dir=out)["counts"]
    s = load_split(out)
    assert len(s.train) == counts["train"] and len(s.test) == counts["test"] > 0
    assert s.snapshot_id == manifest["snapshot_id"] and len(s.items) == 300
