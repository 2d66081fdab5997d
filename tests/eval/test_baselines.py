"""Baselines on tiny deterministic data: formulas by hand, and ALS beats random."""

import numpy as np
import pandas as pd
import pytest

from shortlist.eval.baselines import ALS, EASE, ItemKNN, MostPopular, make_baseline
from shortlist.eval.harness import evaluate, holdout_last


def frame(pairs):
    return pd.DataFrame(
        {
            "user_id": [str(u) for u, _ in pairs],
            "item_id": [str(i) for _, i in pairs],
            "timestamp": np.arange(len(pairs), dtype=np.int64),
            "weight": np.ones(len(pairs), np.float32),
        }
    )


EMPTY = frame([])


def clustered(n_users=60, n_items=30, clusters=3, p=0.5, seed=0) -> pd.DataFrame:
    """Users of cluster c interact with a random half of cluster c's items (and a few others)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for u in range(n_users):
        c = u % clusters
        for i in range(n_items):
            if (i % clusters == c and rng.random() < p) or rng.random() < 0.03:
                pairs.append((f"u{u}", f"i{i:02d}"))
    df = frame(pairs)
    df["timestamp"] = rng.permutation(len(df)).astype(np.int64)
    return df


def test_most_popular_ranks_by_train_count_and_serves_unknown_users():
    train = frame([("u1", "a"), ("u2", "a"), ("u3", "a"), ("u1", "b"), ("u2", "b"), ("u3", "c")])
    model = MostPopular().fit(train, EMPTY)
    assert model.item_ids.tolist() == ["a", "b", "c"]
    scores = model.score(["u1", "nobody"])
    assert scores.dtype == np.float32 and scores.shape == (2, 3)
    assert np.argsort(-scores[1]).tolist() == [0, 1, 2]
    assert np.array_equal(scores[0], scores[1])


def test_ease_solves_its_constrained_least_squares():
    df = clustered(seed=3)
    lam = 5.0
    model = EASE({"lambda": [lam]}).fit(df, EMPTY)
    x = model._x.toarray().astype(np.float64)
    g = x.T @ x
    b = model._b.astype(np.float64)
    assert np.allclose(np.diag(b), 0.0)
    # Stationarity of min ||X - XB||^2 + lam ||B||^2 s.t. diag(B) = 0: the gradient
    # (G + lam I) B - G is zero off the diagonal (the diagonal holds the multipliers).
    grad = (g + lam * np.eye(len(g))) @ b - g
    off = grad - np.diag(np.diag(grad))
    assert np.abs(off).max() < 1e-3 * np.abs(g).max()
    # And the closed form itself: B_ij = -P_ij / P_jj with P = (G + lam I)^-1.
    p = np.linalg.inv(g + lam * np.eye(len(g)))
    expected = -p / np.diag(p)[None, :]
    np.fill_diagonal(expected, 0.0)
    assert np.allclose(b, expected, atol=1e-5)
    row = model._user_index.get_loc("u0")
    assert np.allclose(model.score(["u0"])[0], x[row] @ expected, atol=1e-4)


def test_item_knn_cosine_with_shrink_and_neighbour_pruning():
    # n_0 = 3, n_1 = 2, n_2 = 2; co(0,1) = 2, co(0,2) = 1, co(1,2) = 0.
    pairs = [("u1", 0), ("u1", 1), ("u2", 0), ("u2", 1), ("u3", 0), ("u3", 2), ("u4", 2)]
    train = frame(pairs)
    full = ItemKNN({"neighbours": [2], "shrink": [0.0]}).fit(train, EMPTY)
    s = full._sim.toarray()
    assert s[0, 1] == pytest.approx(2 / np.sqrt(6), rel=1e-5)
    assert s[0, 2] == pytest.approx(1 / np.sqrt(6), rel=1e-5)
    assert s[1, 2] == 0.0 and np.all(np.diag(s) == 0)
    assert full.score(["u4"])[0] == pytest.approx([1 / np.sqrt(6), 0.0, 0.0], rel=1e-5)
    shrunk = ItemKNN({"neighbours": [2], "shrink": [1.0]}).fit(train, EMPTY)
    assert shrunk._sim.toarray()[0, 1] == pytest.approx(2 / (np.sqrt(6) + 1), rel=1e-5)
    pruned = ItemKNN({"neighbours": [1], "shrink": [0.0]}).fit(train, EMPTY)
    p = pruned._sim.toarray()
    # Item 0 keeps only its closest neighbour (item 1), so item 2 no longer scores it.
    assert p[1, 0] > 0 and p[2, 0] == 0.0 and p[0, 2] > 0


def _dense_item_knn(x: np.ndarray, k: int, shrink: float) -> np.ndarray:
    """The ItemKNN similarity by its definition, densely: a reference for small catalogs."""
    co = x.T @ x
    norms = np.sqrt(np.diag(co))
    sim = co / (norms[:, None] * norms[None, :] + shrink + 1e-12)
    np.fill_diagonal(sim, 0.0)
    out = np.zeros_like(sim)
    for j in range(sim.shape[1]):
        cand = np.flatnonzero(sim[:, j] > 0)
        best = cand[np.lexsort((cand, -sim[cand, j]))][:k]  # ties: the lower index
        out[best, j] = sim[best, j]
    return out


@pytest.mark.parametrize("block_pairs", [1, 50, 20_000_000])
def test_item_knn_sparse_blocks_match_the_dense_definition(block_pairs):
    df = clustered(n_users=50, n_items=40, seed=11)
    model = ItemKNN({"neighbours": [5], "shrink": [3.0]})
    model.block_pairs = block_pairs  # 1: one column a block; 20M: the whole catalog at once
    model.fit(df, EMPTY)
    expected = _dense_item_knn(model._x.toarray().astype(np.float64), 5, 3.0)
    np.testing.assert_allclose(model._sim.toarray(), expected, rtol=1e-5, atol=1e-7)


def test_ease_above_max_items_fits_the_most_popular_and_says_so():
    df = clustered(n_users=60, n_items=30, seed=4)
    counts = df.item_id.value_counts()
    model = EASE({"lambda": [5.0]}, max_items=10).fit(df, EMPTY)
    assert len(model.item_ids) == 10 and model._b.shape == (10, 10)
    kept = counts.reindex(model.item_ids).to_numpy()
    assert kept.min() >= counts.drop(model.item_ids).max()  # the most popular ones
    assert model.notes and "10 most popular of 30" in model.notes[0]
    assert model.score(["u0", "nobody"]).shape == (2, 10)
    res = evaluate(model, df, df.iloc[:20], ks=[5], catalog=np.unique(df.item_id))
    assert res["catalog_size"] == 30 and res["notes"] == model.notes
    full = EASE({"lambda": [5.0]}).fit(df, EMPTY)
    assert len(full.item_ids) == 30 and full.notes == []


def test_make_baseline_reads_ease_max_items_and_tuning_sample(params):
    p = params.with_overrides({"evaluation.ease_max_items": 123, "evaluation.sample_users": 7})
    assert make_baseline("ease", p).max_items == 123
    assert make_baseline("als", p).tune_sample_users == 7
    p = p.with_overrides({"evaluation.tune_max_interactions": 99})
    assert make_baseline("item_knn", p).tune_max_interactions == 99


def _random_recall(train, test, k):
    """Expected recall@k of a uniformly random ranking of each user's unseen items."""
    items = set(train.item_id)
    seen = train.groupby("user_id")["item_id"].apply(set)
    per_user = [
        min(k, len(items - seen.get(u, set()))) / len(items - seen.get(u, set()))
        for u in test.user_id.unique()
    ]
    return float(np.mean(per_user))


@pytest.mark.parametrize("name", ["als", "ease", "item_knn"])
def test_personalised_baselines_beat_random_on_clustered_data(name, params):
    df = clustered()
    train, test = holdout_last(df, 0.3, min_interactions=3)
    fit_part, validation = holdout_last(train, 0.2, min_interactions=3)
    p = params.with_overrides(
        {
            "evaluation.grid.als_factors": [8],
            "evaluation.grid.als_iterations": [10],
            "evaluation.grid.als_alpha": [1.0, 5.0],
            "evaluation.grid.ease_lambda": [1.0, 10.0],
            "evaluation.grid.item_knn_neighbours": [10],
            "evaluation.primary_metric": "recall@5",
        }
    )
    model = make_baseline(name, p).fit(fit_part, validation)
    res = evaluate(model, train, test, ks=[5], segments=["all"])
    assert res["segments"]["all"]["recall@5"] > 2 * _random_recall(train, test, 5)


def test_tuning_evaluates_every_grid_point_and_keeps_the_best():
    df = clustered(seed=5)
    train, validation = holdout_last(df, 0.3, min_interactions=3)
    model = ALS(
        {"factors": [2, 8], "regularization": [0.1], "iterations": [5], "alpha": [1.0]},
        tune_metric="recall@5",
    ).fit(train, validation)
    assert len(model.tuning) == 2
    best = max(model.tuning, key=lambda t: t["recall@5"])
    assert model.best_params["factors"] == best["factors"]
    # Refit on train + validation: the validation pairs are now part of the history.
    assert model._x.nnz == len(train) + len(validation)


def test_grid_searched_on_a_user_sample_then_refitted_on_all(monkeypatch):
    df = clustered(seed=5)
    train, validation = holdout_last(df, 0.3, min_interactions=3)
    cap = len(train) // 3
    fitted_rows = []
    real = EASE._fit_matrix

    def spy(self, interactions, params):
        fitted_rows.append(interactions)
        real(self, interactions, params)

    monkeypatch.setattr(EASE, "_fit_matrix", spy)
    model = EASE({"lambda": [1.0, 10.0]}, tune_max_interactions=cap, seed=3)
    model.refit_on_validation = False
    model.fit(train, validation)
    *tuned, final = fitted_rows
    assert len(tuned) == 2 and all(len(t) <= cap for t in tuned)
    users = set(tuned[0].user_id)
    # Whole histories of the sampled users, and the same sample for every grid point.
    assert len(tuned[0]) == len(train[train.user_id.isin(users)]) and set(tuned[1].user_id) == users
    assert len(final) == len(train)
    assert any("grid searched on a seeded sample" in n for n in model.notes)
    unsampled = EASE({"lambda": [1.0, 10.0]}, tune_max_interactions=len(train)).fit(
        train, validation
    )
    assert not any("sample" in n for n in unsampled.notes)


def test_als_is_deterministic_for_a_seed():
    df = clustered(seed=7)
    grid = {"factors": [4], "regularization": [0.1], "iterations": [5], "alpha": [1.0]}
    a = ALS(grid, seed=1, threads=1).fit(df, EMPTY).score(["u1", "u2"])
    b = ALS(grid, seed=1, threads=1).fit(df, EMPTY).score(["u1", "u2"])
    assert np.allclose(a, b)


def test_unknown_baseline_name_is_an_error(params):
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline("nope", params)


def test_reference_numbers_on_ml100k_protocol(ml100k_path):
    """MostPopular and EASE on the benchmark protocol land on values measured independently.

    Reference (capped recall, see benchmarks/README.md): MostPopular Recall@20 0.122;
    EASE Recall@20 0.235, NDCG@20 0.205, Recall@200 0.700.
    """
    raw = pd.read_csv(
        ml100k_path / "u.data", sep="\t", names=["user_id", "item_id", "weight", "timestamp"]
    )
    df = raw.astype({"user_id": str, "item_id": str})
    train, test = holdout_last(df, 0.2)
    catalog = np.unique(train.item_id)
    pop = evaluate(MostPopular().fit(train, EMPTY), train, test, ks=[20], catalog=catalog)
    assert pop["segments"]["all"]["capped_recall@20"] == pytest.approx(0.122, abs=0.005)
    ease = EASE({"lambda": [250.0]}).fit(train, EMPTY)
    res = evaluate(ease, train, test, ks=[20, 200], catalog=catalog, segments=["all"])
    seg = res["segments"]["all"]
    assert seg["capped_recall@20"] == pytest.approx(0.235, abs=0.01)
    assert seg["ndcg@20"] == pytest.approx(0.205, abs=0.01)
    assert seg["recall@200"] == pytest.approx(0.700, abs=0.015)
    assert seg["recall@20"] < seg["capped_recall@20"]  # |rel| > 20 for heavy users


def test_the_fit_matrix_orders_ids_as_sorting_would():
    """Users and items are indexed by hashing, in the sorted order np.unique gives, mixed
    case, digits and non-ASCII ids included."""
    from shortlist.eval.baselines import MostPopular

    ids = ["b", "B", "10", "9", "é", "a b", "", "Ω", "user_10", "user_9"]
    rng = np.random.default_rng(0)
    inter = pd.DataFrame(
        {
            "user_id": rng.choice(ids, 300),
            "item_id": rng.choice(ids, 300),
            "timestamp": np.arange(300),
            "weight": 1.0,
        }
    )
    base = MostPopular()
    base._fit_matrix(inter, {})
    assert list(base.item_ids) == list(np.unique(inter["item_id"].astype(str)))
    assert list(base._user_index) == list(np.unique(inter["user_id"].astype(str)))
    x = base._x.toarray()
    for u, i in zip(inter["user_id"], inter["item_id"], strict=True):
        assert x[base._user_index.get_loc(u), list(base.item_ids).index(i)] == 1.0
    assert x.sum() == len(inter.drop_duplicates(["user_id", "item_id"]))
