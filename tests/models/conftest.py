"""Fixtures for the model tests: ml-100k as contract tables, a per-user temporal split, and
the tiny data prepared for single training steps (`setup`, `make_net`, `make_batch`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shortlist.data import schema


def per_user_split(
    interactions: pd.DataFrame, test_fraction: float = 0.2, validation_fraction: float = 0.1
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per user, by (timestamp, item_id): last test_fraction is test, the validation_fraction
    before it validation, the rest train."""
    df = interactions.sort_values([schema.USER_ID, schema.TIMESTAMP, schema.ITEM_ID], kind="stable")
    pos = df.groupby(schema.USER_ID).cumcount().to_numpy()
    n = df.groupby(schema.USER_ID)[schema.ITEM_ID].transform("size").to_numpy()
    n_test = np.round(n * test_fraction).astype(int)
    n_val = np.round(n * validation_fraction).astype(int)
    part = np.where(pos >= n - n_test, 2, np.where(pos >= n - n_test - n_val, 1, 0))
    return (
        df[part == 0].reset_index(drop=True),
        df[part == 1].reset_index(drop=True),
        df[part == 2].reset_index(drop=True),
    )


@pytest.fixture(scope="session")
def ml100k_tables(ml100k_path: Path):
    from shortlist.data.movielens import load_ml100k

    return load_ml100k(ml100k_path)


@pytest.fixture(scope="session")
def ml100k_split(ml100k_tables):
    interactions, items, users = ml100k_tables
    train, validation, test = per_user_split(interactions)
    return {"train": train, "validation": validation, "test": test, "items": items, "users": users}


@pytest.fixture(scope="module")
def tiny_params():
    """Towers small enough to train on `test_two_tower.tiny_data` in about a second."""
    from shortlist.config import Params

    return Params().with_overrides(
        {
            "towers.embedding_dim": 16,
            "towers.hidden_dim": 32,
            "towers.id_dim": 16,
            "towers.history_len": 5,
            "towers.batch_size": 64,
            "towers.epochs": 2,
            "towers.title_hash_buckets": 64,
            "towers.threads": 1,
            "towers.logq.hash_buckets": 4096,
        }
    )


@pytest.fixture(scope="module")
def setup(tiny_params):
    """Causal-history towers params, the tiny data's feature state, items, training
    examples and item feature tensors (for tests that drive single steps)."""
    from shortlist.models.examples import build_examples, item_feature_tensors
    from shortlist.models.features import FeatureState
    from tests.models.test_two_tower import tiny_data

    tp = tiny_params.towers.model_copy(update={"history_mode": "causal", "mixed_negatives": 8})
    train, _, items, users = tiny_data()
    state = FeatureState.fit(train, items, users, title_hash_buckets=64, user_buckets=1)
    examples = build_examples(train, state, users, tp.history_len, "causal")
    feats = item_feature_tensors(state, items)
    return tp, state, items, examples, feats


def make_net(setup, sparse: bool):
    """The towers for `setup`, seeded, with sparse or dense embedding tables."""
    import torch

    from shortlist.models.fit import model_config
    from shortlist.models.objective import set_sparse
    from shortlist.models.two_tower import build_net

    tp, state, items, _, _ = setup
    torch.manual_seed(0)
    net = build_net(state, model_config(tp), items)
    set_sparse(net, sparse)
    return net


def make_batch(setup, rows, seed: int = 0):
    """`prepare_batch` for the examples at `rows` of `setup`."""
    from shortlist.models.logq import StreamingFrequencyEstimator
    from shortlist.models.objective import prepare_batch

    tp, _, _, examples, feats = setup
    est = StreamingFrequencyEstimator(4096, tp.logq.alpha)
    est.update(examples.item_idx, 0)
    rng = np.random.default_rng(seed)
    return prepare_batch(examples, rows, feats, est, est.steps_seen, tp, rng)
