"""Fault: anyone who reaches MLflow approves; registry tags make a bundle promotable;
loading a registered version unpickles what a registry writer uploaded.

Against the real MLflow server running its basic-auth app (tests/servers.py): the
pipeline writes with its service account (`shortlist-pipeline`, which owns the
registered model it creates); a reviewer is an account created by the admin
(`POST /api/2.0/mlflow/users/create`) and granted EDIT on the registered model by its
owner (`POST /api/3.0/mlflow/users/permissions/grant`, resource_type registered_model).
Safe outcome: anonymous writes are refused (401), an account without a grant cannot
move `champion` nor set tags (403), the granted reviewer can, `approved_by` records no
invented identity, tags set by hand do not make an unblessed bundle promotable (the
platform's own records decide), and the registered model holds no pickle.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from shortlist import registry
from shortlist.errors import PromotionRefused

pytestmark = pytest.mark.servers

BLESSED = {"verdict": "BLESSED", "blessed": True, "metric": "recall@20", "reasons": ["ok"]}
NOT_BLESSED = {"verdict": "NOT_BLESSED", "blessed": False, "metric": "recall@20", "reasons": []}


@pytest.fixture
def reg(params, mlflow_tracking, tmp_path):
    p = params.with_overrides(
        {
            "promotion.registered_model": f"auth-{uuid.uuid4().hex[:8]}",
            "mlflow.tracking_uri": mlflow_tracking.url,
            "bundle.root": str(tmp_path / "bundles"),
        }
    )
    return p, mlflow_tracking


def register(params, tmp_path: Path, bundle_id: str, blessing=BLESSED) -> str:
    where = tmp_path / f"reg-{bundle_id}"
    where.mkdir()
    (where / "manifest.json").write_text(json.dumps({"bundle_id": bundle_id}))
    return registry.register_bundle(
        params,
        bundle_dir=str(where),
        manifest={"bundle_id": bundle_id, "data_snapshot_id": "snap"},
        blessing=blessing,
        canary={"passed": True},
        metrics={"recall@20": 0.3},
    )


def alias(server, model: str, version: str, auth) -> int:
    body = {"name": model, "alias": "champion", "version": version}
    return server.api("POST", "/api/2.0/mlflow/registered-models/alias", body, auth)[0]


def tag(server, model: str, version: str, key: str, value: str, auth) -> int:
    body = {"name": model, "version": version, "key": key, "value": value}
    return server.api("POST", "/api/2.0/mlflow/model-versions/set-tag", body, auth)[0]


def test_only_granted_accounts_approve_and_no_identity_is_invented(reg, tmp_path):
    params, server = reg
    model = params.promotion.registered_model
    version = register(params, tmp_path, "b1")

    # anonymous: every write refused, nothing changed
    assert alias(server, model, version, None) == 401
    assert tag(server, model, version, "blessed", "true", None) == 401
    status, _ = server.api(
        "POST",
        "/api/2.0/mlflow/model-versions/create",
        {"name": model, "source": str(tmp_path)},
        None,
    )
    assert status == 401
    # an account without a grant on the model: may read, may not approve nor tag
    intruder = server.create_user(f"intruder-{uuid.uuid4().hex[:6]}")
    assert (
        server.api("GET", f"/api/2.0/mlflow/registered-models/get?name={model}", None, intruder)[0]
        == 200
    )
    assert alias(server, model, version, intruder) == 403
    assert tag(server, model, version, "approved_by", "intruder", intruder) == 403
    assert registry.alias_version(params, registry.CHAMPION) is None
    assert not registry.await_approval(params, version, timeout_s=0)

    # a reviewer granted EDIT on this model by its owner (the pipeline's account)
    reviewer = server.create_user(f"reviewer-{uuid.uuid4().hex[:6]}")
    server.grant(model, reviewer[0], "EDIT", by=server.pipeline)
    assert alias(server, model, version, reviewer) == 200
    assert registry.await_approval(params, version, timeout_s=0)
    mv = registry.alias_version(params, registry.CHAMPION)
    assert mv.version == version
    assert mv.tags["approved_by"] == (
        f"mlflow-ui: an account granted EDIT or MANAGE on {model} (the MLflow server records "
        "no author for an alias move)"
    )


def test_tags_set_by_hand_do_not_make_an_unblessed_bundle_promotable(reg, tmp_path):
    from pipelines import release
    from shortlist.bundle.slots import Slots

    params, server = reg
    model = params.promotion.registered_model
    slots = Slots(params.bundle.root)
    slot = slots.idle_slot()
    slots.store.write_bytes(
        f"{slot}/manifest.json", json.dumps({"bundle_id": "bz", "files": {}}).encode()
    )
    slots.write_canary(slot, {"bundle_id": "bz", "passed": True})
    slots.write_blessing(slot, {"bundle_id": "bz", **NOT_BLESSED})  # the pipeline's verdict
    version = register(params, tmp_path, "bz", blessing=NOT_BLESSED)

    # someone with EDIT on the model rewrites the view and approves
    reviewer = server.create_user(f"editor-{uuid.uuid4().hex[:6]}")
    server.grant(model, reviewer[0], "EDIT", by=server.pipeline)
    assert tag(server, model, version, "blessed", "true", reviewer) == 200
    assert tag(server, model, version, "canary_passed", "true", reviewer) == 200
    assert alias(server, model, version, reviewer) == 200
    registry.check_promotable(params, version)  # the tags alone would let it through

    with pytest.raises(PromotionRefused, match="not blessed in the platform's own record"):
        release.promote_approved(params, version=version, root=params.bundle.root)
    assert slots.read_pointer() is None


def test_registered_versions_hold_no_pickle(reg, tmp_path):
    import mlflow

    params, _ = reg
    version = register(params, tmp_path, "bp")
    mv = registry._client(params)[1].get_model_version(params.promotion.registered_model, version)
    local = Path(mlflow.artifacts.download_artifacts(mv.source, dst_path=str(tmp_path / "dl")))
    files = [p for p in local.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in {".pkl", ".pickle", ".cloudpickle"}], files
    import yaml

    pyfunc = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert pyfunc.get("model_code_path") and "python_model" not in pyfunc  # no pickled model
    assert (local / "registry_model.py").is_file()  # the code MLflow runs to load it
    assert any(p.name == "manifest.json" for p in files)  # the bundle's files, as artifacts
