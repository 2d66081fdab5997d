"""The review page a person approves from: contents, and tidy aliases after promotion."""

from __future__ import annotations

import uuid

import pytest

from shortlist import registry, review
from shortlist.blessing import bless
from shortlist.config import EvaluationParams

CHALLENGER = {"recall@20": 0.1418, "ndcg@20": 0.0900, "mrr": 0.2}
CHAMPION = {"recall@20": 0.1594, "ndcg@20": 0.1000, "mrr": 0.25}
BASELINES = {"most_popular": {"recall@20": 0.07, "ndcg@20": 0.04, "mrr": 0.1}}


def test_blessing_reasons_name_both_scores_and_the_threshold() -> None:
    ev = EvaluationParams(min_relative_gain_over_champion=0.05)
    verdict = bless(CHALLENGER, BASELINES, ev, CHAMPION)
    reason = next(r for r in verdict.reasons if "champion" in r)
    assert not verdict.blessed
    assert reason.startswith("does not beat champion")
    assert "0.1418 vs champion 0.1594" in reason and "threshold 0.1674" in reason
    assert "-11.0%" in reason
    assert verdict.thresholds["champion"] == pytest.approx(0.1594 * 1.05)


def test_description_puts_challenger_and_champion_side_by_side() -> None:
    blessing = bless(CHALLENGER, BASELINES, EvaluationParams(), CHAMPION).to_dict()
    text = review.describe(
        bundle_id="b-new",
        blessing=blessing,
        canary={"passed": True},
        metrics=CHALLENGER,
        comparison={"champion": CHAMPION, "baselines": BASELINES, "eval_part": "test"},
        champion_gain=0.0,
        champion_version="3",
        champion_recorded={"recall@20": 0.1601},
        run_id="abc123",
        experiment_id="7",
    )
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("|")}
    gate = rows["**recall@20** (gate)"]
    cells = [c.strip() for c in gate.strip("|").split("|")]
    assert cells[1:] == [
        "0.1418",
        "0.1594",
        "-0.0176 (-11.0%)",
        "> 0.1594",
        "0.0700 most_popular",
        "0.1601",
    ]
    assert "champion (v3)" in text and "NOT_BLESSED" in text
    assert list(rows)[2:5] == ["**recall@20** (gate)", "ndcg@20", "mrr"]
    assert "#/experiments/7/runs/abc123/artifactPath/comparison" in text
    assert "get-artifact?path=comparison%2Fplots%2Frecall_at_k.png&run_uuid=abc123" in text
    assert review.NOT_PROMOTABLE in text  # not blessed: never "awaits approval"


def test_first_model_has_no_champion_column_values() -> None:
    blessing = bless(CHALLENGER, BASELINES, EvaluationParams()).to_dict()
    text = review.describe(
        bundle_id="b1",
        blessing=blessing,
        canary={"passed": True},
        metrics=CHALLENGER,
        comparison={},
        champion_gain=0.0,
    )
    assert "No champion yet" in text and review.AWAITING in text


def test_status_line_is_replaced_not_appended() -> None:
    first = review.with_status(f"# t\n\n{review.AWAITING}\n\nbody", "**Status:** done")
    assert first == "# t\n\n**Status:** done\n\nbody\n"
    assert review.with_status("body", "**Status:** x").startswith("**Status:** x\n")


@pytest.mark.servers
def test_promotion_removes_challenger_and_records_the_approval(
    params, mlflow_tracking, tmp_path
) -> None:  # noqa: ANN001
    p = params.with_overrides(
        {
            "promotion.registered_model": f"review-{uuid.uuid4().hex[:8]}",
            "mlflow.tracking_uri": mlflow_tracking.url,
        }
    )
    blessing = {"verdict": "BLESSED", "blessed": True, "metric": "recall@20", "reasons": []}
    versions = []
    for bundle_id in ("old", "new"):
        bundle = tmp_path / bundle_id
        bundle.mkdir()
        (bundle / "manifest.json").write_text("{}")
        versions.append(
            registry.register_bundle(
                p,
                bundle_dir=str(bundle),
                manifest={"bundle_id": bundle_id},
                blessing=blessing,
                canary={"passed": True},
                metrics={"recall@20": 0.2},
            )
        )
        registry.set_champion(p, versions[-1], approved_by="mlflow-ui")
        review.record_promotion(p, versions[-1], when=0)
    old, new = versions
    assert registry.alias_version(p, registry.CHALLENGER) is None
    client = registry._client(p)[1]
    name = p.promotion.registered_model
    text = client.get_model_version(name, new).description
    assert "`champion`, live: approved by mlflow-ui, promoted 1970-01-01 00:00 UTC" in text
    assert "awaits approval" not in text
    assert "retired: version 2 replaced it" in client.get_model_version(name, old).description
    assert review.version_url(p, new).endswith(f"/#/models/{name}/versions/{new}")
    assert review.version_url(p, new).startswith(mlflow_tracking.url)
