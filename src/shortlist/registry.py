"""The MLflow model registry as the approval gate for bundles.

One registered model (params.promotion.registered_model); each version is one bundle,
logged as a pyfunc whose artifacts are the bundle's files, tagged so a reviewer sees in
the MLflow UI what it is (bundle id, blessing, canary, data snapshot, key metrics) with
a readable description. Aliases, never the deprecated stages:

- ``challenger``: set on a version that is blessed and passed its canary.
- ``champion``: the live bundle. A person approves a promotion by moving ``champion``
  to the challenger in the MLflow UI; the retrain DAG senses that move.

Versions are looked up by their ``bundle_id`` tag before registering, so a retried task
never creates a duplicate version. Register from one task only: MLflow's version
numbering races under concurrent writers.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shortlist.config import Params
from shortlist.errors import PromotionRefused
from shortlist.tracking import configure, metric_key

CHALLENGER = "challenger"
CHAMPION = "champion"

TAG_BUNDLE = "bundle_id"
TAG_BLESSED = "blessed"
TAG_CANARY = "canary_passed"
TAG_SNAPSHOT = "data_snapshot"
TAG_SLOT = "slot"
TAG_APPROVED_BY = "approved_by"
TAG_REEMBEDDED = "reembedded_bundle_id"


def _client(params: Params):
    mlflow = configure(params)
    return mlflow, mlflow.MlflowClient()


def find_version(params: Params, bundle_id: str):
    """The registry version holding `bundle_id`, or None."""
    _, client = _client(params)
    name = params.promotion.registered_model
    try:
        found = client.search_model_versions(f"name='{name}' and tag.{TAG_BUNDLE}='{bundle_id}'")
    except Exception as exc:  # the registered model may not exist yet
        if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower():
            return None
        raise
    return min(found, key=lambda v: int(v.version)) if found else None


def alias_version(params: Params, alias: str):
    """The version an alias points at, or None when the alias is not set."""
    _, client = _client(params)
    try:
        return client.get_model_version_by_alias(params.promotion.registered_model, alias)
    except Exception as exc:
        text = str(exc)
        if "RESOURCE_DOES_NOT_EXIST" in text or "not found" in text.lower() or "alias" in text:
            return None
        raise


def alias_view(params: Params) -> dict[str, Any]:
    """Read-only: {model, registered, aliases: {alias: {version, bundle_id, approved_by}}},
    or {error} when the registry cannot be read. Creates nothing (no experiment, no
    SQLite file), so `status` may call it anywhere."""
    from shortlist.tracking import tracking_uri

    name = params.promotion.registered_model
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.mlflow.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():
        return {"model": name, "registered": False, "aliases": {}}
    # A status query must answer in seconds, not retry a dead server for minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=tracking_uri(params))
        try:
            model = client.get_registered_model(name)
        except Exception as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower():
                return {"model": name, "registered": False, "aliases": {}}
            raise
        aliases = {}
        for alias, version in sorted((model.aliases or {}).items()):
            mv = client.get_model_version(name, str(version))
            tags = mv.tags or {}
            # A version re-embedded by the reembed DAG serves a newer bundle of the same
            # model: either bundle id is this version live.
            ids = [tags.get(TAG_BUNDLE), tags.get(TAG_REEMBEDDED)]
            aliases[alias] = {
                "version": str(version),
                "bundle_id": tags.get(TAG_BUNDLE),
                "bundle_ids": [b for b in ids if b],
                "approved_by": tags.get(TAG_APPROVED_BY),
            }
    except Exception as exc:  # noqa: BLE001 - status reports it instead of failing
        return {"model": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return {"model": name, "registered": True, "aliases": aliases}


def register_bundle(
    params: Params,
    *,
    bundle_dir: str,
    manifest: dict[str, Any],
    blessing: dict[str, Any],
    canary: dict[str, Any],
    metrics: dict[str, float],
    comparison_dir: str | None = None,
    slot: str = "",
) -> str:
    """Log the bundle as a pyfunc model version (idempotent by bundle id); return the version.

    Sets ``challenger`` when the version is blessed and its canary passed.
    """
    mlflow, client = _client(params)
    bundle_id = manifest["bundle_id"]
    name = params.promotion.registered_model
    existing = find_version(params, bundle_id)
    if existing is None:
        existing = _log_version(
            mlflow, params, bundle_dir, manifest, blessing, canary, metrics, comparison_dir
        )
    version = str(existing.version)
    tags = {
        TAG_BUNDLE: bundle_id,
        TAG_BLESSED: str(bool(blessing.get("blessed"))).lower(),
        TAG_CANARY: str(bool(canary.get("passed"))).lower(),
        TAG_SNAPSHOT: str(manifest.get("data_snapshot_id", "")),
        TAG_SLOT: slot,
    }  # a handful, readable in the versions table; metrics go to the run and description
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(
        name,
        version,
        description=_review(
            params, client, existing, bundle_id, blessing, canary, metrics, comparison_dir
        ),
    )
    if blessing.get("blessed") and canary.get("passed"):
        client.set_registered_model_alias(name, CHALLENGER, version)
    return version


def _review(params, client, mv, bundle_id, blessing, canary, metrics, comparison_dir) -> str:
    """The version's review page (shortlist.review): side by side with the champion."""
    from shortlist import review

    champion = alias_version(params, CHAMPION)
    recorded = None
    if champion is not None and champion.run_id:
        try:
            run_metrics = client.get_run(champion.run_id).data.metrics
            recorded = {
                k: run_metrics[metric_key(k)] for k in metrics if metric_key(k) in run_metrics
            }
        except Exception:  # noqa: BLE001 - the recorded column is a courtesy
            recorded = None
    experiment_id = None
    if mv.run_id:
        experiment_id = client.get_run(mv.run_id).info.experiment_id
    return review.describe(
        bundle_id=bundle_id,
        blessing=blessing,
        canary=canary,
        metrics=metrics,
        comparison=review.load_comparison(comparison_dir),
        champion_gain=params.evaluation.min_relative_gain_over_champion,
        champion_version=None if champion is None else str(champion.version),
        champion_recorded=recorded or None,
        run_id=mv.run_id,
        experiment_id=experiment_id,
    )


def _log_version(mlflow, params, bundle_dir, manifest, blessing, canary, metrics, comparison_dir):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from shortlist import registry_model

    name = params.promotion.registered_model
    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(name)
    except Exception:
        client.create_registered_model(
            name,
            description=(
                "Shortlist serving bundles: user tower + item embeddings + FAISS index + "
                "ranker + manifest. `champion` is live; `challenger` awaits approval."
            ),
            tags={"product": "shortlist"},
        )
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "user_id"), ColSpec("long", "k", required=False)]),
        outputs=Schema(
            [
                ColSpec("string", "user_id"),
                ColSpec("string", "item_id"),
                ColSpec("long", "rank"),
                ColSpec("double", "score"),
                ColSpec("string", "bundle_id"),
            ]
        ),
    )
    import pandas as pd

    bundle_id = manifest["bundle_id"]
    with mlflow.start_run(
        run_name=f"register-{bundle_id}",
        tags={"shortlist.stage": "register", TAG_BUNDLE: bundle_id},
    ):
        mlflow.log_dict(blessing, "blessing.json")
        mlflow.log_dict(canary, "canary.json")
        mlflow.log_metrics({metric_key(k): v for k, v in metrics.items()})
        if comparison_dir and Path(comparison_dir).exists():
            mlflow.log_artifacts(comparison_dir, artifact_path="comparison")
        info = mlflow.pyfunc.log_model(
            name="bundle",
            python_model=registry_model.__file__,  # models from code: no pickle
            artifacts={"bundle": str(bundle_dir)},
            signature=signature,
            input_example=pd.DataFrame({"user_id": ["1"], "k": [10]}),
            pip_requirements=["shortlist"],
            registered_model_name=name,
            metadata={"bundle_id": bundle_id, "manifest": json.dumps(manifest, default=str)},
        )
    found = find_version(params, bundle_id)
    if found is not None:
        return found
    # Registration happened under log_model; tag it so a retry finds it.
    version = info.registered_model_version
    client.set_model_version_tag(name, str(version), TAG_BUNDLE, bundle_id)
    return client.get_model_version(name, str(version))


def check_promotable(params: Params, version: str) -> None:
    """Refuse (PromotionRefused) a version that is not blessed or failed its canary."""
    _, client = _client(params)
    mv = client.get_model_version(params.promotion.registered_model, str(version))
    tags = mv.tags or {}
    if tags.get(TAG_BLESSED) != "true":
        raise PromotionRefused(f"version {version} is not blessed: it can never go live")
    if tags.get(TAG_CANARY) != "true":
        raise PromotionRefused(f"version {version} did not pass its canary: it can never go live")


def await_approval(
    params: Params,
    version: str,
    *,
    timeout_s: float | None = None,
    poll_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Wait until `champion` points at `version` (a person moved it); False on timeout.

    With params.promotion.auto_approve the alias is moved here and the version tagged
    approved_by=auto (with the account the pipeline writes as), for unattended setups.
    A person's approval is recorded only as far as the server can tell (`approver`):
    MLflow keeps no author for an alias move, so no name is invented for it.
    """
    _, client = _client(params)
    name = params.promotion.registered_model
    if params.promotion.auto_approve:
        check_promotable(params, version)
        client.set_registered_model_alias(name, CHAMPION, str(version))
        account = os.environ.get("MLFLOW_TRACKING_USERNAME")
        auto = f"auto (service account {account})" if account else "auto"
        client.set_model_version_tag(name, str(version), TAG_APPROVED_BY, auto)
        return True
    timeout = params.promotion.approval_timeout_seconds if timeout_s is None else timeout_s
    poll = params.promotion.poll_seconds if poll_s is None else poll_s
    deadline = time.monotonic() + timeout
    while True:
        champ = alias_version(params, CHAMPION)
        if champ is not None and str(champ.version) == str(version):
            if not (champ.tags or {}).get(TAG_APPROVED_BY):
                client.set_model_version_tag(name, str(version), TAG_APPROVED_BY, approver(params))
            return True
        if time.monotonic() >= deadline:
            return False
        sleep(poll)


def approver(params: Params) -> str:
    """Who moved `champion`, as far as the tracking server can tell. MLflow records no
    author for an alias move; with its basic-auth app on, only accounts granted EDIT or
    MANAGE on the registered model can make one, and that is what is recorded."""
    from shortlist.tracking import tracking_uri

    uri = tracking_uri(params)
    name = params.promotion.registered_model
    if uri.startswith(("http://", "https://")) and os.environ.get("MLFLOW_TRACKING_USERNAME"):
        return (
            f"mlflow-ui: an account granted EDIT or MANAGE on {name} (the MLflow server "
            "records no author for an alias move)"
        )
    return "mlflow-ui: unauthenticated registry (anyone who reaches it can move an alias)"


def set_champion(params: Params, version: str, approved_by: str) -> None:
    """Move `champion` (used by rollback to re-align the registry with the live bundle)."""
    _, client = _client(params)
    check_promotable(params, version)
    name = params.promotion.registered_model
    client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_model_version_tag(name, str(version), TAG_APPROVED_BY, approved_by)


def tag_version(params: Params, version: str, key: str, value: str) -> None:
    _, client = _client(params)
    client.set_model_version_tag(params.promotion.registered_model, str(version), key, value)
