"""Tiny real models and datasets for bundle tests: ml-100k tables, towers with fixed init.

The towers are initialised but not trained (seeded, so deterministic): the bundle and
canary contracts (checksums, fingerprints, ANN vs exact, serving vs model) do not depend
on model quality, and building one takes a second instead of minutes of training.
"""

from __future__ import annotations

from pathlib import Path

from shortlist.config import Params


def write_ml100k_dataset(ml100k_path: Path, out: Path) -> str:
    from shortlist.data.io import write_dataset
    from shortlist.data.movielens import load_ml100k

    interactions, items, users = load_ml100k(ml100k_path)
    write_dataset(str(out), interactions, items, users, "movielens-100k")
    return str(out)


def small_params(params: Params) -> Params:
    return params.with_overrides(
        {
            "towers.embedding_dim": 16,
            "towers.hidden_dim": 32,
            "towers.history_len": 20,
            "towers.title_hash_buckets": 256,
            "canary.users": 100,
            "index.embed_batch_size": 500,
        }
    )


def make_towers(
    params: Params, data_dir: str, out: Path, seed: int = 0, meta: dict | None = None
) -> str:
    """Save an untrained (seeded) TwoTowerRetriever fitted on the dataset's vocabularies
    (`meta` adds to its metadata, e.g. an inference popularity term)."""
    import torch

    from shortlist.data.io import read_dataset
    from shortlist.models.features import FeatureState
    from shortlist.models.train import model_config
    from shortlist.models.two_tower import TwoTowerRetriever, build_net

    ds = read_dataset(data_dir)
    torch.manual_seed(seed)
    tp = params.towers
    # the last 5% of items are left out of the vocabulary: cold items must still embed
    warm_items = ds.items["item_id"].iloc[: int(len(ds.items) * 0.95)]
    train = ds.interactions[ds.interactions["item_id"].isin(set(warm_items))]
    state = FeatureState.fit(
        train,
        ds.items,
        ds.users,
        title_hash_buckets=tp.title_hash_buckets,
        user_buckets=tp.user_buckets,
    )
    config = model_config(tp)
    net = build_net(state, config, ds.items)
    TwoTowerRetriever(
        net, state, config, ds.items, meta={"mlflow_run_id": f"run-{seed}", **(meta or {})}
    ).save(str(out))
    return str(out)
