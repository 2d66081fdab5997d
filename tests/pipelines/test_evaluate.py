"""Stage `evaluate`: files, metrics layout and the MLflow run, on a small synthetic split."""

import json
import uuid

import numpy as np
import pandas as pd
import pytest

from pipelines import evaluate as stage
from pipelines import split as split_stage
from shortlist.data.io import write_dataset
from shortlist.eval.baselines import EASE


def _dataset(path, n_users=40, n_items=24, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for i in range(n_items):
            if (i % 3 == u % 3 and rng.random() < 0.6) or rng.random() < 0.05:
                rows.append((f"u{u}", f"i{i}", int(rng.integers(0, 10**6))))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).assign(weight=1.0)
    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(n_items + 2)],  # two items nobody saw
            "title": [f"Item {i}" for i in range(n_items + 2)],
            "genres": [[f"g{i % 3}"] for i in range(n_items + 2)],
        }
    )
    users = pd.DataFrame({"user_id": [f"u{u}" for u in range(n_users)]})
    write_dataset(str(path), inter, items, users, source="test")


@pytest.fixture
def split_dir(tmp_path, params):
    data = tmp_path / "data"
    _dataset(data)
    p = params.with_overrides(
        {"split.mode": "per_user", "split.test_fraction": 0.2, "split.min_validation_users": 10}
    )
    split_stage.run(p, data_dir=str(data), out_dir=str(tmp_path / "split"))
    return tmp_path / "split"


@pytest.mark.servers
def test_evaluate_stage_writes_metrics_report_plots_and_mlflow_run(
    tmp_path, params, split_dir, monkeypatch, mlflow_tracking
):
    def stand_in(model_dir, p, split, seen):
        model = EASE({"lambda": [10.0]})
        model.name = "challenger"
        return model.fit(seen, seen.iloc[:0])

    monkeypatch.setattr(stage, "load_model", stand_in)
    p = params.with_overrides(
        {
            "evaluation.baselines": ["most_popular", "ease"],
            "evaluation.grid.ease_lambda": [1.0, 100.0],
            "evaluation.ks": [5, 10],
            "evaluation.primary_metric": "recall@5",
            "mlflow.experiment": f"evaluate-{uuid.uuid4().hex[:8]}",
        }
    )
    out = tmp_path / "eval"
    result = stage.run(
        p, model_dir=str(tmp_path / "model"), split_dir=str(split_dir), out_dir=str(out)
    )

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_part"] == "test" and metrics["model"] == "challenger"
    assert set(metrics["baselines"]) == {"most_popular", "ease"}
    assert metrics["challenger"]["recall@5"] == result["metrics"]["challenger"]["recall@5"]
    # The baselines were tuned: every grid point of EASE has a validation score.
    assert len(metrics["baseline_tuning"]["ease"]["grid"]) == 2
    # The catalog includes the items nobody interacted with (cold items).
    assert metrics["results"]["challenger"]["catalog_size"] == 26
    assert "| challenger |" in result["table"] and "| most_popular |" in result["table"]
    assert (out / "report.md").read_text().startswith("## Retrieval evaluation")
    curve = json.loads((out / "plots" / "recall_at_k.json").read_text())
    assert [row["k"] for row in curve] == [5, 10] and "ease" in curve[0]
    assert (out / "plots" / "recall_at_k.png").stat().st_size > 0
    # The blessing says whether a ranker will serve (none was trained for this model).
    ranker = json.loads((out / "blessing.json").read_text())["ranker"]
    assert ranker["shipped"] is False and "retrieval order serves" in ranker["reason"]
    assert "Ranker: no ranker was trained" in result["table"]

    import mlflow

    mlflow.set_tracking_uri(mlflow_tracking.url)
    runs = mlflow.search_runs(
        experiment_names=[p.mlflow.experiment], filter_string="tags.`shortlist.stage` = 'evaluate'"
    )
    assert len(runs) == 1
    logged = runs.iloc[0]
    assert logged["metrics.challenger/all/recall_at_5"] == pytest.approx(
        metrics["challenger"]["recall@5"]
    )
    assert "metrics.most_popular/all/ndcg_at_10" in runs.columns


@pytest.mark.slow
@pytest.mark.servers
def test_evaluate_stage_loads_a_trained_two_tower_model(
    tmp_path, params, split_dir, mlflow_tracking
):
    from shortlist.data.split_io import load_split
    from shortlist.models.fit import train_two_tower

    p = params.with_overrides(
        {
            "towers.epochs": 2,
            "towers.embedding_dim": 16,
            "towers.hidden_dim": 32,
            "towers.batch_size": 64,
            "evaluation.baselines": ["most_popular"],
            "evaluation.ks": [5, 10],
            "mlflow.experiment": f"evaluate-{uuid.uuid4().hex[:8]}",
        }
    )
    split = load_split(str(split_dir))
    model_dir = tmp_path / "model"
    train_two_tower(
        p,
        split.train,
        split.validation,
        split.items,
        split.users,
        progress=False,
        mlflow_run=False,
        out_dir=str(model_dir),
    )
    result = stage.run(p, model_dir=str(model_dir), split_dir=str(split_dir))
    metrics = json.loads((model_dir / "eval" / "metrics.json").read_text())
    assert metrics["model"] == "two_tower"
    seg = metrics["results"]["two_tower"]["segments"]["all"]
    assert seg["users"] > 0 and 0.0 <= seg["recall@10"] <= 1.0
    # The towers score every catalog item, including the two nobody interacted with.
    assert metrics["results"]["two_tower"]["catalog_size"] == 26
    assert "| two_tower |" in result["table"]
