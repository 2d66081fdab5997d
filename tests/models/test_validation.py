"""The towers' validation metrics: scored in blocks, equal to one dense score matrix."""

from __future__ import annotations

import numpy as np
import pytest

from shortlist.eval import metrics as M
from shortlist.models.examples import vocab_catalog
from shortlist.models.fit import train_two_tower
from shortlist.models.validation import TowerValidationSet, evaluate_retriever
from tests.models.test_two_tower import tiny_data


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_blocked_validation_equals_the_dense_matrix(tiny_params, weight):
    train, validation, items, users = tiny_data()
    model, _ = train_two_tower(
        tiny_params, train, validation, items, users, seed=1, progress=False, mlflow_run=False
    )
    state = model.state
    vset = TowerValidationSet(state, train, validation, model.history_len)
    catalog = vocab_catalog(state, items)
    log_pop = model.log_popularity(state.item_vocab)
    ks = (5, 20)
    blocked = [
        evaluate_retriever(model, vset, catalog, users, ks, weight, log_pop, max_cells=cells)
        for cells in (1, 7 * len(catalog), 10**9)
    ]
    # The dense reference: one (users x items) matrix, train items excluded.
    q = model.embed_users(vset.user_ids, vset.histories, users, vset.timestamps)
    scores = q @ model.embed_items(catalog).T + weight * model.temperature * log_pop[None, :]
    scores[vset.seen_rows, vset.seen_cols] = -np.inf
    idx, valid = M.top_k(scores, max(ks))
    hits = np.stack([np.isin(idx[r], rel) for r, rel in enumerate(vset.relevant)]) & valid
    per_user = M.ranking_metrics(hits, np.array([len(rel) for rel in vset.relevant]), ks)
    assert len(vset) > 10 and all(len(rel) for rel in vset.relevant)
    for out in blocked:
        assert out == blocked[0]
        for key, value in out.items():
            assert value == pytest.approx(float(per_user[key].mean()), abs=1e-12), key


def test_a_user_cap_keeps_a_seeded_sample_consistent_with_the_full_set(tiny_params):
    train, validation, items, users = tiny_data()
    model, _ = train_two_tower(
        tiny_params, train, validation, items, users, seed=1, progress=False, mlflow_run=False
    )
    full = TowerValidationSet(model.state, train, validation, model.history_len)
    part = TowerValidationSet(model.state, train, validation, model.history_len, 5, seed=3)
    again = TowerValidationSet(model.state, train, validation, model.history_len, 5, seed=3)
    assert len(part) == 5 and part.users_total == len(full) > 5
    assert part.user_ids == again.user_ids and set(part.user_ids) < set(full.user_ids)
    for r, user in enumerate(part.user_ids):
        f = full.user_ids.index(user)
        assert np.array_equal(part.relevant[r], full.relevant[f])  # the same targets
        seen = part.seen_cols[part.seen_ptr[r] : part.seen_ptr[r + 1]]
        seen_full = full.seen_cols[full.seen_ptr[f] : full.seen_ptr[f + 1]]
        assert np.array_equal(np.sort(seen), np.sort(seen_full))  # the same exclusions
