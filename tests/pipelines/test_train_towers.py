"""Stages train_towers and export_recs on real ml-100k: model dir, MLflow run, CSV export."""

from __future__ import annotations

import json

import pandas as pd


def test_train_towers_then_export_recs(ml100k_path, params, tmp_path):
    from pipelines import export_recs, ingest, split, train_towers

    data, split_dir, model_dir = tmp_path / "data", tmp_path / "split", tmp_path / "model"
    ingest.run(params, source="movielens-100k", path=str(ml100k_path), out_dir=str(data))
    sp = params.with_overrides(
        {"split.mode": "per_user", "split.test_fraction": 0.2, "split.min_user_interactions": 5}
    )
    manifest = split.run(sp, data_dir=str(data), out_dir=str(split_dir))
    p = params.with_overrides({"towers.epochs": 1, "towers.threads": 1})

    result = train_towers.run(p, split_dir=str(split_dir), out_dir=str(model_dir))

    names = {f.name for f in model_dir.iterdir()}
    assert {"towers.safetensors", "towers.json", "items.parquet", "history.json"} <= names
    assert {"history.png", "metrics.json"} <= names
    doc = json.loads((model_dir / "towers.json").read_text())
    assert doc["snapshot_id"] == manifest["snapshot_id"] != ""
    assert doc["mlflow_run_id"] == result["mlflow_run_id"]
    assert doc["fingerprint"] == result["fingerprint"]
    assert 0.1 < result["validation"]["recall@20"] < 1
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["validation"] == result["validation"]

    from mlflow.tracking import MlflowClient

    from shortlist.tracking import tracking_uri

    run = MlflowClient(tracking_uri(p)).get_run(result["mlflow_run_id"])
    assert run.data.tags["shortlist.snapshot_id"] == manifest["snapshot_id"]
    assert run.data.params["towers.embedding_dim"] == str(p.towers.embedding_dim)
    assert abs(run.data.metrics["best_recall_at_20"] - result["validation"]["recall@20"]) < 1e-9
    artifacts = {
        a.path for a in MlflowClient(tracking_uri(p)).list_artifacts(run.info.run_id, "model")
    }
    assert "model/towers.safetensors" in artifacts and "model/history.png" in artifacts

    users_csv = tmp_path / "users.csv"
    pd.DataFrame({"user_id": ["1", "42", "no-such-user"]}).to_csv(users_csv, index=False)
    out_csv = tmp_path / "recs.csv"
    n = export_recs.run(
        p,
        model_dir=str(model_dir),
        data_dir=str(data),
        users_csv=str(users_csv),
        k=15,
        out_csv=str(out_csv),
        stage="funnel",
    )
    recs = pd.read_csv(out_csv, dtype={"user_id": str, "item_id": str})
    assert n == len(recs) == 45
    assert list(recs.columns) == ["user_id", "item_id", "rank"]
    assert (recs.groupby("user_id")["rank"].apply(list) == [list(range(1, 16))] * 3).all()
    seen = pd.read_parquet(data / "interactions.parquet")
    pairs = set(zip(seen["user_id"], seen["item_id"], strict=True))
    assert not any((u, i) in pairs for u, i in zip(recs["user_id"], recs["item_id"], strict=True))
    catalog = set(pd.read_parquet(data / "items.parquet")["item_id"])
    assert set(recs["item_id"]) <= catalog
    assert recs.groupby("user_id")["item_id"].nunique().eq(15).all()
