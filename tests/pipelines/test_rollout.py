"""build-bundle -> canary -> promote -> rollback on the shared tiny dataset, through the stage functions
and the CLI: the live slot is never written, a failed canary blocks promotion, and
rollback is an instant pointer flip."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines import build_bundle, canary, rollout
from shortlist.bundle import manifest as mf
from shortlist.bundle.slots import Slots
from shortlist.cli import main
from shortlist.errors import PromotionRefused
from tests.bundle.helpers import make_towers, small_params
from tests.conftest import TINY


@pytest.fixture(scope="module")
def world(tiny_dataset, tmp_path_factory):
    """One dataset, two towers (different seeds) and one MLflow store for the module."""
    from shortlist.config import load_params
    from tests.conftest import REPO

    tmp = tmp_path_factory.mktemp("rollout")
    data = tiny_dataset
    p = small_params(load_params(REPO / "params.yaml"))
    models = [make_towers(p, data, tmp / f"model{s}", seed=s) for s in (0, 1)]
    return data, models, f"sqlite:///{tmp / 'mlflow.db'}"


@pytest.fixture
def setup(world, params, tmp_path):
    data, models, mlflow_uri = world
    p = small_params(params).with_overrides(
        {"bundle.cache_dir": str(tmp_path / "cache"), "mlflow.tracking_uri": mlflow_uri}
    )
    return p, data, models, p.bundle.root


def digest_tree(path: str) -> dict[str, str]:
    root = Path(path)
    return {
        str(f.relative_to(root)): mf.sha256_file(f) for f in sorted(root.rglob("*")) if f.is_file()
    }


def test_build_canary_promote_rollback(setup, capsys):
    p, data, (m0, m1), root = setup
    first = build_bundle.run(p, model_dir=m0, data_dir=data)  # root from params
    assert first["slot"] == "blue" and first["item_count"] == TINY["items"]
    with pytest.raises(PromotionRefused, match="no canary report"):
        rollout.promote(p)

    report = canary.run(p)
    assert report["passed"], report["reasons"]
    checks = report["checks"]
    assert checks["ann_recall"]["recall@10"] == 1.0  # flat index: ANN is exact
    assert checks["ann_recall"]["users"] == 100
    assert checks["consistency"]["max_abs_diff"] <= p.canary.reembed_tolerance
    assert checks["live_path"]["gap"] <= p.canary.live_path_tolerance
    assert (
        json.loads((Path(root) / "blue" / mf.CANARY).read_text())["bundle_id"] == first["bundle_id"]
    )

    live = rollout.promote(p)
    assert live["live_slot"] == "blue" and live["bundle_id"] == first["bundle_id"]
    blue_before = digest_tree(f"{root}/blue")

    second = build_bundle.run(p, model_dir=m1, data_dir=data, root=root)
    assert second["slot"] == "green" and second["bundle_id"] != first["bundle_id"]
    assert digest_tree(f"{root}/blue") == blue_before  # the live slot was not touched
    assert canary.run(p, root=root)["passed"]
    flipped = rollout.promote(p, root=root)
    assert flipped["bundle_id"] == second["bundle_id"] and flipped["previous_slot"] == "blue"

    t0 = time.perf_counter()
    back = rollout.rollback(p, root=root)
    assert time.perf_counter() - t0 < 1.0
    assert back["bundle_id"] == first["bundle_id"] and back["live_slot"] == "blue"

    status = rollout.status(p, root=root)
    assert status["live"]["bundle_id"] == first["bundle_id"]
    assert status["idle"]["bundle_id"] == second["bundle_id"]
    assert status["idle"]["canary"]["passed"] is True
    text = rollout.format_status(status)
    assert f"live: slot=blue bundle={first['bundle_id']}" in text and "canary PASSED" in text

    assert main(["status", "--root", root, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["live"]["slot"] == "blue" and shown["disagreements"] == []
    # the rolled-back bundle does not come back, neither by promotion nor by rollback
    assert main(["promote", "--root", root]) == 1
    assert "was rolled back" in capsys.readouterr().err
    assert main(["rollback", "--root", root]) == 1
    assert "reached by rolling back" in capsys.readouterr().err
    assert Slots(root).read_pointer()["bundle_id"] == first["bundle_id"]


def test_failed_canary_blocks_promotion_and_live_keeps_serving(setup, capsys):
    p, data, (m0, m1), root = setup
    first = build_bundle.run(p, model_dir=m0, data_dir=data)
    assert canary.run(p)["passed"]
    rollout.promote(p)

    build_bundle.run(p, model_dir=m1, data_dir=data)
    green = Path(root) / "green"
    with open(green / "index.faiss", "ab") as fh:
        fh.write(b"\0")  # tampered after the build
    report = canary.run(p)
    assert not report["passed"] and "tampered" in report["reasons"][0]
    with pytest.raises(PromotionRefused, match="failed its canary"):
        rollout.promote(p)
    assert main(["promote", "--root", root]) == 1
    assert "failed its canary" in capsys.readouterr().err
    assert Slots(root).read_pointer()["bundle_id"] == first["bundle_id"]

    # embeddings from another model with consistent checksums: loads, but (c) catches it
    second = build_bundle.run(p, model_dir=m1, data_dir=data)
    tmp_other = Path(root).parent / "other"
    from shortlist.bundle.bundle import build_bundle as build

    build(p, model_dir=m0, data_dir=data, dest=str(tmp_other), progress=False)
    for name in ("item_embeddings.npy", "index.faiss"):
        shutil.copyfile(tmp_other / name, green / name)
    doc = json.loads((green / mf.MANIFEST).read_text())
    for name in ("item_embeddings.npy", "index.faiss"):
        doc["files"][name] = mf.sha256_file(green / name)
    doc["bundle_id"] = mf.make_bundle_id(doc["model_fingerprint"], doc["files"])  # resealed
    (green / mf.MANIFEST).write_text(json.dumps(doc))
    report = canary.run(p)
    assert report["bundle_id"] == doc["bundle_id"] != second["bundle_id"]
    assert not report["passed"]
    assert not report["checks"]["consistency"]["passed"]
    assert report["checks"]["consistency"]["max_abs_diff"] > 0.01
    with pytest.raises(PromotionRefused):
        rollout.promote(p)
    assert Slots(root).read_pointer()["bundle_id"] == first["bundle_id"]


def test_ann_below_slo_fails_canary(setup):
    p, data, (m0, _), root = setup
    p = p.with_overrides({"index.type": "ivf_flat", "index.nlist": 40, "index.nprobe": 1})
    build_bundle.run(p, model_dir=m0, data_dir=data)
    report = canary.run(p)
    ann = report["checks"]["ann_recall"]
    assert not report["passed"] and ann["recall@10"] < p.canary.recall_slo
    assert any(r.startswith("ann_recall") for r in report["reasons"])
    assert np.isfinite(ann["recall@100"])
