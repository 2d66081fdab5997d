"""Fixtures for the model tests: ml-100k as contract tables and a per-user temporal split."""

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
