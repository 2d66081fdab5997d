from shortlist.blessing import bless
from shortlist.config import EvaluationParams

BASELINES = {
    "most_popular": {"recall@20": 0.12},
    "ease": {"recall@20": 0.235},
    "als": {"recall@20": 0.21},
    "item_knn": {"recall@20": 0.19},
}


def test_first_model_must_beat_every_baseline():
    params = EvaluationParams(primary_metric="recall@20")
    ok = bless({"recall@20": 0.30}, BASELINES, params)
    assert ok.blessed and ok.verdict == "BLESSED"
    assert any("no champion yet" in r for r in ok.reasons)

    worse_than_ease = bless({"recall@20": 0.22}, BASELINES, params)
    assert not worse_than_ease.blessed
    assert any("does not beat baseline ease" in r for r in worse_than_ease.reasons)
    assert worse_than_ease.to_dict()["verdict"] == "NOT_BLESSED"


def test_challenger_must_beat_champion_by_the_relative_margin():
    params = EvaluationParams(primary_metric="recall@20", min_relative_gain_over_champion=0.02)
    champion = {"recall@20": 0.30}
    assert not bless({"recall@20": 0.305}, BASELINES, params, champion).blessed  # +1.7% < 2%
    assert bless({"recall@20": 0.31}, BASELINES, params, champion).blessed


def test_a_tie_is_not_a_win_and_missing_metrics_refuse():
    params = EvaluationParams(primary_metric="recall@20")
    assert not bless({"recall@20": 0.30}, BASELINES, params, {"recall@20": 0.30}).blessed
    assert not bless({"ndcg@20": 0.3}, BASELINES, params).blessed
    assert not bless({"recall@20": 0.9}, {}, params).blessed
