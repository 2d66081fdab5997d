"""Bundle build/load on the shared tiny dataset with real (seeded, untrained) towers: contents,
checksums, refusal of tampered files and of a manifest naming another model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from shortlist.bundle import manifest as mf
from shortlist.bundle.bundle import INDEX, build_bundle, load_bundle, local_copy
from shortlist.errors import BundleError
from shortlist.index.ann import exact_search, recall_at_k, search
from tests.bundle.helpers import make_towers, small_params


@pytest.fixture(scope="module")
def built(tiny_dataset, tmp_path_factory):
    from shortlist.config import load_params
    from tests.conftest import REPO

    tmp = tmp_path_factory.mktemp("bundle")
    params = small_params(load_params(REPO / "params.yaml")).with_overrides(
        {"bundle.staging_dir": str(tmp / "staging"), "bundle.cache_dir": str(tmp / "cache")}
    )
    data = tiny_dataset
    model = make_towers(params, data, tmp / "model")
    manifest = build_bundle(
        params, model_dir=model, data_dir=data, dest=str(tmp / "b"), progress=False
    )
    return params, data, model, tmp / "b", manifest


def copy_of(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def test_bundle_contents_and_contract(built):
    params, data, model, where, manifest = built
    bundle = load_bundle(str(where))
    from shortlist.data.io import read_dataset

    ds = read_dataset(data)
    assert bundle.bundle_id == manifest.bundle_id
    assert manifest.item_count == len(ds.items) == len(bundle.item_ids)  # cold items included
    assert manifest.embedding_dim == 16 and manifest.dtype == "float32" and manifest.metric == "ip"
    assert manifest.data_snapshot_id == ds.snapshot_id and manifest.data_snapshot_id
    assert manifest.mlflow["mlflow_run_id"] == "run-0"
    assert manifest.model_fingerprint == bundle.retriever.fingerprint
    assert set(manifest.files) >= {"model/towers.safetensors", INDEX, "item_embeddings.npy"}
    assert manifest.index_type == "flat" and not manifest.has_ranker and bundle.ranker is None
    norms = np.linalg.norm(bundle.item_vectors, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-4)
    fresh = bundle.retriever.embed_items(bundle.items.iloc[:50])
    np.testing.assert_allclose(fresh, bundle.item_vectors[:50], atol=1e-5)
    q = bundle.retriever.embed_users(["u1"], [bundle.histories["u1"]])
    _, rows = search(bundle.index, q, 10)
    _, exact = exact_search(bundle.item_vectors, q, 10)
    assert recall_at_k(rows, exact, 10) == 1.0
    assert len(bundle.histories) == ds.interactions["user_id"].nunique()
    last = ds.interactions[ds.interactions.user_id == "u1"].sort_values(["timestamp", "item_id"])
    assert bundle.histories["u1"][-1] == last["item_id"].iloc[-1]
    assert bundle.popularity.shape == (manifest.item_count,) and bundle.popularity.max() == 1.0


def test_index_serves_the_popularity_corrected_score(built, tmp_path):
    """With an inference popularity term the index holds item_vectors (embedding + the
    popularity column): searching it with the widened user embedding ranks exactly like
    query_vectors . item_vectors, the score offline evaluation measures."""
    from shortlist.data.io import read_dataset
    from shortlist.models.vectors import serving_item_vectors, widen_queries

    params, data, _model, _where, _manifest = built
    ds = read_dataset(data)
    counts = ds.interactions["item_id"].astype(str).value_counts()
    meta = {
        "inference_popularity_weight": 0.5,
        "item_log_popularity": {i: float(np.log(c / counts.sum())) for i, c in counts.items()},
        "log_popularity_floor": float(np.log(0.5 / counts.sum())),
    }
    model = make_towers(params, data, tmp_path / "model", meta=meta)
    manifest = build_bundle(
        params, model_dir=model, data_dir=data, dest=str(tmp_path / "b"), progress=False
    )
    bundle = load_bundle(str(tmp_path / "b"))
    d = bundle.retriever.embedding_dim
    assert manifest.popularity_column and manifest.embedding_dim == d + 1
    assert bundle.item_vectors.shape == (manifest.item_count, d + 1)
    np.testing.assert_allclose(
        bundle.item_vectors[:50], bundle.retriever.item_vectors(bundle.items.iloc[:50]), atol=1e-5
    )
    np.testing.assert_allclose(
        serving_item_vectors(bundle.retriever, bundle.items.iloc[:5], width=d + 1),
        bundle.item_vectors[:5],
        atol=1e-5,
    )
    users = ["u1", "u2", "u3"]
    hists = [bundle.histories[u] for u in users]
    q = widen_queries(bundle.retriever.embed_users(users, hists), d + 1)
    np.testing.assert_allclose(q, bundle.retriever.query_vectors(users, hists), atol=1e-6)
    _, rows = search(bundle.index, q, 20)
    _, exact = exact_search(bundle.retriever.item_vectors(bundle.items), q, 20)
    assert recall_at_k(rows, exact, 20) == 1.0
    # The popularity column moves the ranking: the plain embeddings alone would differ.
    _, plain = exact_search(np.asarray(bundle.item_vectors)[:, :d], q[:, :d], 20)
    assert recall_at_k(rows, plain, 20) < 1.0


def test_tampered_index_is_refused(built, tmp_path):
    where = copy_of(built[3], tmp_path / "b")
    with open(where / INDEX, "r+b") as fh:
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleError, match="index.faiss .*tampered"):
        load_bundle(str(where))


def reseal(doc: dict) -> dict:
    """Give an edited manifest the bundle id its content hashes to (a forger's next step)."""
    doc["bundle_id"] = mf.make_bundle_id(doc["model_fingerprint"], doc["files"])
    return doc


def test_edited_manifest_no_longer_matches_its_bundle_id(built, tmp_path):
    where = copy_of(built[3], tmp_path / "b")
    doc = json.loads((where / mf.MANIFEST).read_text())
    doc["files"]["popularity.npy"] = "0" * 64
    (where / mf.MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="manifest was edited after the build"):
        load_bundle(str(where))


def test_manifest_naming_another_model_is_refused(built, tmp_path):
    where = copy_of(built[3], tmp_path / "b")
    doc = json.loads((where / mf.MANIFEST).read_text())
    doc["model_fingerprint"] = "0" * 64
    (where / mf.MANIFEST).write_text(json.dumps(reseal(doc)))
    with pytest.raises(BundleError, match="names model 000000000000"):
        load_bundle(str(where))


def test_swapped_towers_are_refused(built, tmp_path):
    """Towers from another run dropped in with a consistent checksum still do not match."""
    params, data, _, src, _ = built
    where = copy_of(src, tmp_path / "b")
    other = make_towers(params, data, tmp_path / "other", seed=1)
    shutil.copyfile(Path(other) / "towers.safetensors", where / "model/towers.safetensors")
    shutil.copyfile(Path(other) / "towers.json", where / "model/towers.json")
    doc = json.loads((where / mf.MANIFEST).read_text())
    for name in ("model/towers.safetensors", "model/towers.json"):
        doc["files"][name] = mf.sha256_file(where / name)
    (where / mf.MANIFEST).write_text(json.dumps(reseal(doc)))
    with pytest.raises(BundleError, match="different models"):
        load_bundle(str(where))


def test_short_history_window_with_a_ranker_is_refused_before_the_slot_is_touched(built, tmp_path):
    from shortlist.config import ConfigError
    from shortlist.ranking.ranker import CONFIG, WEIGHTS

    params, data, model, bundle_dir, manifest = built
    model_with_ranker = copy_of(Path(model), tmp_path / "model")
    for name in (CONFIG, WEIGHTS):  # the check only needs a ranker's files to exist
        (model_with_ranker / name).write_text("{}")
    slot = copy_of(bundle_dir, tmp_path / "slot")
    short = params.with_overrides({"bundle.history_len": 50})
    with pytest.raises(ConfigError, match="bundle.history_len is 50"):
        build_bundle(
            short, model_dir=str(model_with_ranker), data_dir=data, dest=str(slot), progress=False
        )
    assert load_bundle(str(slot)).manifest.bundle_id == manifest.bundle_id  # still serving


def test_half_built_slot_is_refused(built, tmp_path):
    where = copy_of(built[3], tmp_path / "b")
    (where / mf.MANIFEST).unlink()
    with pytest.raises(BundleError, match="incomplete"):
        load_bundle(str(where))
    with local_copy(str(where)) as local:
        assert local == str(where)


@pytest.mark.servers
def test_s3_round_trip_and_tamper(built, s3, tmp_path):
    params, data, model, _, _ = built
    dest = f"s3://{s3.new_bucket('bundle')}/root/blue"
    manifest = build_bundle(params, model_dir=model, data_dir=data, dest=dest, progress=False)
    bundle = load_bundle(dest, cache_dir=str(tmp_path / "cache"))
    assert bundle.bundle_id == manifest.bundle_id and len(bundle.item_ids) == manifest.item_count
    with local_copy(dest) as local:
        assert (Path(local) / mf.MANIFEST).exists()
    from shortlist.storage import open_store

    open_store(dest).write_bytes(INDEX, b"not an index")
    with pytest.raises(BundleError, match="tampered"):
        load_bundle(dest, cache_dir=str(tmp_path / "cache2"))


def test_seen_sets_hold_every_interaction_of_heavy_users(built):
    """histories.parquet keeps the last history_len items; seen.parquet keeps them all."""
    from shortlist.data.io import read_dataset

    params, data, _, where, manifest = built
    bundle = load_bundle(str(where))
    assert "seen.parquet" in manifest.files
    ds = read_dataset(data)
    counts = ds.interactions.groupby("user_id").size()
    heavy = str(counts.idxmax())
    assert counts.max() > params.bundle.history_len  # the window really truncates this user
    assert len(bundle.histories[heavy]) == params.bundle.history_len
    row_of = {item: r for r, item in enumerate(bundle.item_ids.tolist())}
    want = {row_of[str(i)] for i in ds.interactions.loc[ds.interactions.user_id == heavy].item_id}
    assert set(bundle.seen.rows(heavy).tolist()) == want
    assert len(bundle.seen.rows("nobody")) == 0 and len(bundle.seen.rows(None)) == 0


def test_loaded_bundle_holds_verified_bytes_not_the_files(built, tmp_path):
    """Serving never reads a bundle file after verifying it: changing a file on disk after
    the load changes nothing in memory, and the arrays cannot be written to either."""
    where = copy_of(built[3], tmp_path / "b")
    bundle = load_bundle(str(where))
    before = np.array(bundle.item_vectors[3])
    emb = np.load(where / "item_embeddings.npy", mmap_mode="r+")
    emb[3] = np.nan
    emb.flush()
    del emb
    np.testing.assert_array_equal(bundle.item_vectors[3], before)
    with pytest.raises(ValueError):
        bundle.item_vectors[3, 0] = 1.0
    with pytest.raises(BundleError, match="item_embeddings.npy .*tampered"):
        load_bundle(str(where))
