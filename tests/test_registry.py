"""The registry as approval gate, against the real MLflow server (SQLite backend)."""

from __future__ import annotations

import uuid

import pytest

from shortlist import registry
from shortlist.errors import PromotionRefused

pytestmark = pytest.mark.servers

BLESSED = {"verdict": "BLESSED", "blessed": True, "metric": "recall@20", "reasons": ["beats x"]}
NOT_BLESSED = {"verdict": "NOT_BLESSED", "blessed": False, "metric": "recall@20", "reasons": []}


@pytest.fixture
def reg_params(params, mlflow_tracking):  # noqa: ANN001, ANN201
    return params.with_overrides(
        {
            "promotion.registered_model": f"bundle-{uuid.uuid4().hex[:8]}",
            "mlflow.tracking_uri": mlflow_tracking.url,
        }
    )


def _register(params, tmp_path, bundle_id, blessing=BLESSED, canary_passed=True):  # noqa: ANN001, ANN202
    bundle = tmp_path / bundle_id
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    return registry.register_bundle(
        params,
        bundle_dir=str(bundle),
        manifest={"bundle_id": bundle_id, "data_snapshot_id": "snap"},
        blessing=blessing,
        canary={"passed": canary_passed},
        metrics={"recall@20": 0.31},
        slot="blue",
    )


def test_register_is_idempotent_and_sets_challenger(reg_params, tmp_path) -> None:  # noqa: ANN001
    version = _register(reg_params, tmp_path, "b1")
    again = registry.register_bundle(
        reg_params,
        bundle_dir=str(tmp_path / "b1"),
        manifest={"bundle_id": "b1"},
        blessing=BLESSED,
        canary={"passed": True},
        metrics={"recall@20": 0.31},
    )
    assert again == version
    mv = registry.alias_version(reg_params, registry.CHALLENGER)
    assert mv.version == version
    assert mv.tags["bundle_id"] == "b1" and len(mv.tags) <= 6  # metrics live in the run
    assert "BLESSED" in mv.description and "champion" in mv.description


def test_unblessed_or_failed_canary_never_becomes_challenger_nor_promotable(
    reg_params, tmp_path
) -> None:  # noqa: ANN001
    bad = _register(reg_params, tmp_path, "b2", blessing=NOT_BLESSED)
    failed = _register(reg_params, tmp_path, "b3", canary_passed=False)
    assert registry.alias_version(reg_params, registry.CHALLENGER) is None
    with pytest.raises(PromotionRefused, match="not blessed"):
        registry.check_promotable(reg_params, bad)
    with pytest.raises(PromotionRefused, match="canary"):
        registry.check_promotable(reg_params, failed)


def test_approval_waits_for_the_alias_and_times_out(reg_params, tmp_path) -> None:  # noqa: ANN001
    version = _register(reg_params, tmp_path, "b4")
    naps = []
    assert not registry.await_approval(
        reg_params, version, timeout_s=0, poll_s=0, sleep=naps.append
    )
    # what the MLflow UI does when a person moves the alias
    client = registry._client(reg_params)[1]
    client.set_registered_model_alias(reg_params.promotion.registered_model, "champion", version)
    assert registry.await_approval(reg_params, version, timeout_s=0)
    mv = client.get_model_version(reg_params.promotion.registered_model, version)
    # no invented identity: the server records no author, only who could have moved it
    assert mv.tags["approved_by"].startswith("mlflow-ui: an account granted EDIT or MANAGE")


def test_auto_approve_records_who_approved(reg_params, tmp_path) -> None:  # noqa: ANN001
    auto = reg_params.with_overrides({"promotion.auto_approve": True})
    version = _register(auto, tmp_path, "b5")
    assert registry.await_approval(auto, version)
    champion = registry.alias_version(auto, registry.CHAMPION)
    assert champion.version == version
    assert champion.tags["approved_by"] == "auto (service account shortlist-pipeline)"
