"""Fault: `champion` moved in the registry (as the MLflow UI does, over REST) while the
live pointer names another bundle.

Against the real MLflow server and the real command line. Safe outcome: `shortlist
status` shows the aliases and the disagreement; the reconcile step carries out
`champion` moved back to the previously live bundle as a compare-and-swap rollback;
`champion` moved to a bundle that was rolled back, or to a version that is not
promotable, changes nothing and is reported.
"""

from __future__ import annotations

import json
import uuid

import pytest

from tests.bundle.helpers import make_shop

pytestmark = [pytest.mark.slow, pytest.mark.servers]

BLESSED = {"verdict": "BLESSED", "blessed": True, "metric": "recall@20", "reasons": ["ok"]}


@pytest.fixture
def shop(tmp_path_factory, tmp_path, mlflow_server):
    shop = make_shop(tmp_path_factory.getbasetemp() / "faults-template", tmp_path)
    shop.set(
        {
            "mlflow.tracking_uri": mlflow_server.url,
            "promotion.registered_model": f"faults-{uuid.uuid4().hex[:8]}",
        }
    )
    return shop


def register(params, tmp_path, bundle_id: str, blessing=BLESSED) -> str:
    from shortlist import registry

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


def move_champion(server, model: str, version: str) -> None:
    """What the MLflow UI's "Add/Edit alias" sends, as a reviewer granted EDIT on the
    model by the pipeline's account (which owns it)."""
    reviewer = server.create_user(f"reviewer-{uuid.uuid4().hex[:6]}")
    server.grant(model, reviewer[0], "EDIT", by=server.pipeline)
    status, body = server.api(
        "POST",
        "/api/2.0/mlflow/registered-models/alias",
        {"name": model, "alias": "champion", "version": version},
        reviewer,
    )
    assert status == 200, body


def test_champion_moved_back_is_a_rollback_and_other_moves_are_reported(
    shop, mlflow_server, tmp_path, monkeypatch
):
    from pipelines import release
    from shortlist import registry

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = shop.params()
    model = params.promotion.registered_model
    a = shop.pointer()["bundle_id"]
    va = register(params, tmp_path, a)
    registry.set_champion(params, va, approved_by="test setup")
    b = json.loads(shop.cli("promote", "--root", shop.root, check=True).stdout)["bundle_id"]
    vb = register(params, tmp_path, b)
    registry.set_champion(params, vb, approved_by="test setup")
    assert release.reconcile(params, root=shop.root)["action"] == "none"

    move_champion(mlflow_server, model, va)  # someone moves champion back in the UI
    shown = json.loads(shop.cli("status", "--root", shop.root, "--json").stdout)
    assert shown["registry"]["aliases"]["champion"]["bundle_id"] == a
    assert any(f"version {va} (bundle {a})" in d for d in shown["disagreements"])
    assert shop.cli("status", "--root", shop.root, "--check", check=False).returncode == 1

    done = release.reconcile(params, root=shop.root)
    assert done["action"] == "rolled_back", done
    assert shop.pointer()["bundle_id"] == a and shop.pointer()["rolled_back_from"] == b
    assert (
        json.loads(shop.cli("status", "--root", shop.root, "--json").stdout)["disagreements"] == []
    )

    move_champion(mlflow_server, model, vb)  # back to the bundle that was rolled back
    refused = release.reconcile(params, root=shop.root)
    assert refused["action"] == "disagree" and "was rolled back" in refused["problem"]
    assert shop.pointer()["bundle_id"] == a
    shown = json.loads(shop.cli("status", "--root", shop.root, "--json").stdout)
    assert any(f"bundle {b}" in d for d in shown["disagreements"])


def test_champion_on_an_unpromotable_version_changes_nothing(shop, mlflow_server, tmp_path):
    from pipelines import release
    from shortlist import registry

    params = shop.params()
    model = params.promotion.registered_model
    a = shop.pointer()["bundle_id"]
    va = register(params, tmp_path, a)
    registry.set_champion(params, va, approved_by="test setup")
    b = json.loads(shop.cli("promote", "--root", shop.root, check=True).stdout)["bundle_id"]
    vb = register(params, tmp_path, b)
    registry.set_champion(params, vb, approved_by="test setup")
    # version A's blessing is taken away, then champion is moved to it
    registry.tag_version(params, va, registry.TAG_BLESSED, "false")
    move_champion(mlflow_server, model, va)
    result = release.reconcile(params, root=shop.root)
    assert result["action"] == "disagree" and "not blessed" in result["problem"]
    assert shop.pointer()["bundle_id"] == b
