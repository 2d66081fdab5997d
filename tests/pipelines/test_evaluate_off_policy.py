"""The evaluate stage's off-policy section: the challenger estimated on logged lists."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pandas as pd
import pytest

from pipelines import evaluate as stage
from shortlist.serving.explore import ExplorationParams, explore

N_ITEMS, N_USERS, K = 40, 30, 6


class FixedScores:
    """A Recommender whose scores are a fixed matrix (users x catalog)."""

    name = "challenger"

    def __init__(self, scores: np.ndarray):
        self.item_ids = np.array([f"i{j}" for j in range(scores.shape[1])], dtype=object)
        self.scores = scores
        self.calls = 0

    def score(self, user_ids):
        self.calls += 1
        return self.scores[[int(u[1:]) for u in user_ids]].astype(np.float32)


def _world(seed=0):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(N_USERS, N_ITEMS))
    click = 1 / (1 + np.exp(-(scores - 1.0)))  # the challenger's scores are informative
    seen = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in range(N_USERS)],
            "item_id": [f"i{int(np.argmax(scores[u]))}" for u in range(N_USERS)],
            "timestamp": np.full(N_USERS, 100, dtype=np.int64),
            "weight": 1.0,
        }
    )
    return scores, click, seen


def _log(scores, click, *, explore_slots, requests=600, seed=1, bundle="b1", policy=None):
    """Lists a logging policy served (the challenger's ranking with noise), with clicks."""
    rng = np.random.default_rng(seed)
    p = ExplorationParams(slots=explore_slots, protected=2, pool=10)
    rows = []
    for r in range(requests):
        u = int(rng.integers(N_USERS))
        noisy = scores[u] + rng.normal(scale=0.5, size=N_ITEMS)
        noisy[np.argmax(scores[u])] = -np.inf  # the user's earlier item is never shown
        order = np.argsort(-noisy)[: N_ITEMS - 1]
        x = explore(noisy[order], K, p, rng)
        for pos, (i, prop) in enumerate(zip(order[x.order], x.propensities, strict=True)):
            engaged = bool(rng.random() < click[u, i])
            rows.append(
                {
                    "request_id": f"r{r}",
                    "user_id": f"u{u}",
                    "item_id": f"i{i}",
                    "timestamp": 1000 + r,
                    "position": pos,
                    "propensity": float(prop),
                    "policy": policy or x.policy,
                    "bundle_id": bundle,
                    "engaged": engaged,
                    "weight": float(engaged),
                    "skipped": False,
                    "dismissed": False,
                }
            )
    return pd.DataFrame(rows)


def test_no_logged_traffic_says_so(params, tmp_path):
    scores, _click, seen = _world()
    section = stage.off_policy_section(
        params, FixedScores(scores), seen, logged_path=str(tmp_path / "none.parquet")
    )
    assert section["available"] is False and "no logged traffic" in section["reason"]


def test_estimates_on_logged_lists(params, tmp_path):
    scores, click, seen = _world()
    logged = pd.concat(
        [
            _log(scores, click, explore_slots=3),
            _log(scores, click, explore_slots=0, requests=50, seed=2, bundle="older"),
            _log(scores, click, explore_slots=0, requests=20, seed=3, policy="plackett_luce"),
        ],
        ignore_index=True,
    )
    anon = logged.index[:K]
    logged.loc[anon, "user_id"] = None
    path = tmp_path / "exposures.parquet"
    logged.to_parquet(path)
    model = FixedScores(scores)
    p = params.with_overrides({"evaluation.off_policy.target": "deterministic"})
    section = stage.off_policy_section(p, model, seen, logged_path=str(path), bundle_id="b1")
    assert section["available"] and section["bundle_id"] == "b1"
    assert section["left_out"] == {"anonymous": K, "other_policy": 20 * K}
    assert section["rows"] == (600 + 20) * K - K - 20 * K  # b1 rows, less the left out
    assert set(section["estimates"]) == {"ips", "snips", "dr"}
    # The truth: the challenger's greedy top K (without the earlier item), mean click rate.
    rows = logged[(logged["bundle_id"] == "b1") & logged["user_id"].notna()]
    rows = rows[rows["policy"] != "plackett_luce"]
    truth = []
    for _rid, req in rows.groupby("request_id"):
        u = int(req["user_id"].iloc[0][1:])
        s = scores[u].copy()
        s[np.argmax(scores[u])] = -np.inf
        truth.append(click[u, np.argsort(-s)[:K]].mean())
    truth = float(np.mean(truth))
    for name, e in section["estimates"].items():
        assert e["ci_low"] <= truth <= e["ci_high"], (name, e, truth)
        assert 0 < e["effective_sample_size"] <= e["n"]
    # The challenger ranks better than the noisy logger: its estimate is higher.
    assert section["estimates"]["snips"]["value"] > section["logged_reward"]["value"]
    assert 0 < section["target_mass_on_logged"] <= 1
    assert model.calls == 1  # one scoring block for 30 users


def test_greedy_logs_of_the_same_ranking_give_the_logged_reward(params, tmp_path):
    scores, click, seen = _world()
    # The logger is the challenger itself, greedy: every target probability is 1.
    rng = np.random.default_rng(5)
    rows = []
    for r in range(200):
        u = int(rng.integers(N_USERS))
        s = scores[u].copy()
        s[np.argmax(scores[u])] = -np.inf
        for pos, i in enumerate(np.argsort(-s)[:K]):
            e = bool(rng.random() < click[u, i])
            rows.append(
                dict(request_id=f"r{r}", user_id=f"u{u}", item_id=f"i{i}", timestamp=1000 + r,
                     position=pos, propensity=1.0, policy="deterministic", bundle_id="b",
                     engaged=e, weight=float(e), skipped=False, dismissed=False)
            )  # fmt: skip
    path = tmp_path / "exposures.parquet"
    pd.DataFrame(rows).to_parquet(path)
    p = params.with_overrides({"evaluation.off_policy.target": "deterministic"})
    section = stage.off_policy_section(p, FixedScores(scores), seen, logged_path=str(path))
    logged = section["logged_reward"]["value"]
    assert section["target_mass_on_logged"] == pytest.approx(1.0)
    for name in ("ips", "snips", "dr"):
        assert section["estimates"][name]["value"] == pytest.approx(logged), name
    assert section["estimates"]["ips"]["effective_sample_size"] == pytest.approx(200 * K)


def _verdict():
    return {"verdict": "BLESSED", "blessed": True, "reasons": []}


def test_the_gate_is_off_by_default_and_needs_enough_ess(params):
    section = {
        "available": True,
        "logged_reward": {"value": 0.2},
        "estimates": {
            "snips": {"value": 0.15, "ci_low": 0.1, "ci_high": 0.2, "effective_sample_size": 900}
        },
    }
    op = params.evaluation.off_policy
    assert op.gate is False
    v = _verdict()
    record = stage.apply_off_policy_gate(v, section, op)
    assert v["blessed"] and record["passed"] is None and not v["reasons"]

    on = params.with_overrides({"evaluation.off_policy.gate": True}).evaluation.off_policy
    v = _verdict()
    record = stage.apply_off_policy_gate(v, section, on)  # 0.15 < 0.2 x 0.95
    assert not v["blessed"] and v["verdict"] == "NOT_BLESSED" and record["passed"] is False
    assert "fails the off-policy gate" in v["reasons"][0]

    few = params.with_overrides(
        {"evaluation.off_policy.gate": True, "evaluation.off_policy.min_ess": 1000}
    ).evaluation.off_policy
    v = _verdict()
    record = stage.apply_off_policy_gate(v, section, few)
    assert v["blessed"] and record["passed"] is None and "skipped" in v["reasons"][0]

    lenient = params.with_overrides(
        {"evaluation.off_policy.gate": True, "evaluation.off_policy.min_lift": -0.5}
    ).evaluation.off_policy
    v = _verdict()
    assert stage.apply_off_policy_gate(v, section, lenient)["passed"] is True and v["blessed"]


@pytest.mark.servers
def test_the_stage_reports_off_policy_estimates(tmp_path, params, monkeypatch, mlflow_tracking):
    from pipelines import split as split_stage
    from shortlist.data.io import write_dataset

    scores, click, _seen = _world()
    rng = np.random.default_rng(3)
    inter = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in rng.integers(0, N_USERS, 600)],
            "item_id": [f"i{i}" for i in rng.integers(0, N_ITEMS, 600)],
            "timestamp": rng.integers(0, 10**6, 600),
            "weight": 1.0,
        }
    ).drop_duplicates(["user_id", "item_id"])
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(N_ITEMS)], "title": "t"})
    users = pd.DataFrame({"user_id": [f"u{u}" for u in range(N_USERS)]})
    data = tmp_path / "data"
    write_dataset(str(data), inter, items, users, source="test")
    _log(scores, click, explore_slots=2).to_parquet(data / "exposures.parquet")
    split_stage.run(
        params.with_overrides({"split.mode": "random", "split.min_validation_users": 5}),
        data_dir=str(data),
        out_dir=str(tmp_path / "split"),
    )
    monkeypatch.setattr(stage, "load_model", lambda *a: FixedScores(scores))
    p = params.with_overrides(
        {
            "data.dir": str(data),
            "evaluation.baselines": ["most_popular"],
            "evaluation.ks": [5, 10],
            "evaluation.primary_metric": "recall@5",
            "evaluation.off_policy.gate": True,
            "evaluation.off_policy.min_ess": 0,
            "evaluation.off_policy.min_lift": 10.0,  # out of reach: the gate refuses
            "mlflow.experiment": f"evaluate-{uuid.uuid4().hex[:8]}",
        }
    )
    out = tmp_path / "eval"
    result = stage.run(p, model_dir=str(tmp_path / "m"), split_dir=str(tmp_path / "split"),
                       out_dir=str(out))  # fmt: skip
    blessing = json.loads((out / "blessing.json").read_text())
    assert blessing["off_policy"]["available"] and blessing["off_policy"]["passed"] is False
    assert blessing["blessed"] is False
    assert any("fails the off-policy gate" in r for r in blessing["reasons"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["off_policy"]["bundle_id"] == "b1"
    assert set(metrics["off_policy"]["estimates"]) == {"ips", "snips", "dr"}
    report = (out / "report.md").read_text()
    assert "### Off-policy estimates" in report and "| snips |" in report
    assert result["blessing"]["off_policy"]["estimator"] == "snips"
