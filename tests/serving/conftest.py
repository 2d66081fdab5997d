"""Fixtures for the serving tests: a tiny structured catalog, two real trained two-tower
models (different seeds, so their scores differ), and real bundles in blue-green slots."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shortlist.config import Params, load_params

REPO = Path(__file__).resolve().parents[2]
GENRES = ["action", "comedy", "drama", "horror", "romance", "scifi"]


def tiny_tables(
    n_users: int = 150, n_items: int = 300, n_interactions: int = 6000, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Users prefer one genre cluster; items have 1-2 genres; 20 items never interacted."""
    rng = np.random.default_rng(seed)
    item_genre = rng.integers(0, len(GENRES), n_items)
    items = pd.DataFrame(
        {
            "item_id": [f"i{j}" for j in range(n_items)],
            "title": [f"{GENRES[g]} story {j}" for j, g in enumerate(item_genre)],
            "genres": [
                [GENRES[g]] + ([GENRES[(g + 1) % len(GENRES)]] if j % 3 == 0 else [])
                for j, g in enumerate(item_genre)
            ],
            "year": rng.integers(1970, 2020, n_items).astype(float),
        }
    )
    user_genre = rng.integers(0, len(GENRES), n_users)
    users = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in range(n_users)],
            "age": rng.integers(18, 70, n_users).astype(float),
            "occupation": rng.choice(["a", "b", "c"], n_users),
        }
    )
    active = n_items - 20  # the last 20 items are cold
    pop = 1.0 / np.arange(1, active + 1) ** 0.8
    rows_u = rng.integers(0, n_users, n_interactions)
    liked = rng.random(n_interactions) < 0.8
    item_of = np.empty(n_interactions, dtype=np.int64)
    genre_of_row = np.where(liked, user_genre[rows_u], -1)  # -1: any item
    for g in range(-1, len(GENRES)):
        pool = np.arange(active) if g < 0 else np.flatnonzero(item_genre[:active] == g)
        cdf = np.cumsum(pop[pool]) / pop[pool].sum()
        mask = genre_of_row == g
        item_of[mask] = pool[np.searchsorted(cdf, rng.random(mask.sum()))]
    interactions = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in rows_u],
            "item_id": [f"i{j}" for j in item_of],
            "timestamp": 1_700_000_000 + np.sort(rng.integers(0, 60 * 86400, n_interactions)),
            "weight": np.ones(n_interactions, dtype=np.float32),
        }
    ).drop_duplicates(["user_id", "item_id"])
    return interactions.reset_index(drop=True), items, users


def serving_params(work: Path, **extra) -> Params:
    """Repository params with every path under `work`, tiny towers and fast polling."""
    base = load_params(REPO / "params.yaml")
    overrides = {
        "project.work_dir": str(work),
        "towers.out_dir": str(work / "model"),
        "towers.embedding_dim": 16,
        "towers.hidden_dim": 32,
        "towers.history_len": 20,
        "towers.batch_size": 256,
        "towers.epochs": 1,
        "towers.threads": 1,
        "ranker.candidates": 50,
        "bundle.root": str(work / "bundles"),
        "bundle.staging_dir": str(work / "staging"),
        "bundle.cache_dir": str(work / "bundle-cache"),
        "serving.impressions_dir": str(work / "impressions"),
        "serving.poll_seconds": 0.1,
        "mlflow.tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
    }
    overrides.update(extra)
    return base.with_overrides(overrides)


@dataclass
class World:
    work: Path
    params: Params
    data_dir: str
    model_a: str
    model_b: str


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    """The tiny dataset on disk and two models trained on it with different seeds."""
    from shortlist.data.io import write_dataset
    from shortlist.models.fit import train_two_tower

    work = tmp_path_factory.mktemp("serving")
    params = serving_params(work)
    interactions, items, users = tiny_tables()
    data_dir = str(work / "data")
    write_dataset(data_dir, interactions, items, users, source="csv")
    cut = interactions["timestamp"].quantile(0.9)
    train = interactions[interactions["timestamp"] <= cut]
    validation = interactions[interactions["timestamp"] > cut]
    models = []
    for seed in (1, 2):
        out = str(work / f"model-{seed}")
        train_two_tower(
            params,
            train,
            validation,
            items,
            users,
            seed=seed,
            progress=False,
            mlflow_run=False,
            out_dir=out,
        )
        models.append(out)
    return World(work, params, data_dir, models[0], models[1])


def build_into_idle(params: Params, root: str, model_dir: str, data_dir: str) -> str:
    """Build a real bundle from `model_dir` into the idle slot of `root`; its bundle id."""
    from shortlist.bundle.bundle import build_bundle
    from shortlist.bundle.slots import Slots

    slots = Slots(root)
    dest = slots.slot_location(slots.idle_slot())
    manifest = build_bundle(
        params, model_dir=model_dir, data_dir=data_dir, dest=dest, progress=False
    )
    return manifest.bundle_id


@pytest.fixture
def live_root(world: World, tmp_path: Path) -> tuple[str, str, str]:
    """A root with model A's bundle live and model B's bundle built into the idle slot.

    Returns (root, bundle_a, bundle_b). Bundles are built once per session and copied."""
    return copy_live_root(world, tmp_path / "bundles")


def copy_live_root(world: World, root: Path) -> tuple[str, str, str]:
    """`live_root`'s layout at `root` (for fixtures of other scopes): (root, a, b)."""
    cache = world.work / "root-template"
    if not (cache / "live.json").exists():
        from shortlist.bundle.slots import Slots

        shutil.rmtree(cache, ignore_errors=True)
        a = build_into_idle(world.params, str(cache), world.model_a, world.data_dir)
        Slots(str(cache)).promote()
        b = build_into_idle(world.params, str(cache), world.model_b, world.data_dir)
        (cache / "ids.txt").write_text(f"{a}\n{b}\n")
    shutil.copytree(cache, root)
    a, b = (cache / "ids.txt").read_text().split()
    return str(root), a, b


@dataclass
class ServeProcess:
    """A real `shortlist serve` process on 127.0.0.1 (see `start_serve`)."""

    proc: object  # subprocess.Popen
    url: str
    log: Path
    params_file: Path


def start_serve(params: Params, root: str, work: Path, timeout: float = 180.0) -> ServeProcess:
    """Run `shortlist serve --root ROOT` with `params` (written to a file) until /ready.

    The process is the suite's own machinery (tests.servers): its own process group,
    killed with the test run; `tests.servers.stop` ends it."""
    import os
    import sys

    import httpx
    import yaml

    from tests.servers import _spawn, _start_with_retries, _wait, free_ports

    work.mkdir(parents=True, exist_ok=True)
    params_file = work / "serve-params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(), sort_keys=False))
    log = work / "serve.log"

    def start() -> ServeProcess:
        (port,) = free_ports(1)
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "shortlist", "serve", "--params", str(params_file)]
        cmd += ["--root", root, "--host", "127.0.0.1", "--port", str(port)]
        proc = _spawn(cmd, dict(os.environ), log, work)

        def ready() -> bool:
            try:
                return httpx.get(url + "/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(proc, ready, "shortlist serve", log, timeout)
        return ServeProcess(proc, url, log, params_file)

    return _start_with_retries(start)
