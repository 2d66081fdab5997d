"""Synthetic generator: deterministic, streamed in chunks, with the structure it promises."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from shortlist.data import schema
from shortlist.data.synth import GENRES, SynthSpec, make_world, write_synth

SPEC = SynthSpec(
    users=3000,
    items=5000,
    interactions=120_000,
    seed=7,
    topics=8,
    chunk_rows=50_000,
    cold_item_fraction=0.1,
    late_user_fraction=0.1,
)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict, dict]:
    out = tmp_path_factory.mktemp("synth")
    checksums, rows = write_synth(SPEC, out, progress=False)
    return out, checksums, rows


@pytest.fixture(scope="module")
def tables(generated):
    out = generated[0]
    return (
        pq.read_table(out / schema.INTERACTIONS).to_pandas(),
        pq.read_table(out / schema.ITEMS).to_pandas(),
        pq.read_table(out / schema.USERS).to_pandas(),
    )


def test_deterministic_for_a_seed(generated, tmp_path: Path):
    _, checksums, rows = generated
    one_thread = SynthSpec(**{**SPEC.as_dict(), "threads": 1})
    again, _ = write_synth(one_thread, tmp_path / "a", progress=False)
    assert again == checksums  # same bytes whatever the number of chunk workers
    other, _ = write_synth(SynthSpec(**{**SPEC.as_dict(), "seed": 8}), tmp_path / "b", False)
    assert other[schema.INTERACTIONS] != checksums[schema.INTERACTIONS]
    assert rows == {schema.INTERACTIONS: 120_000, schema.ITEMS: 5000, schema.USERS: 3000}


def test_streamed_in_chunks_with_contract_schema(generated):
    out = generated[0]
    meta = pq.ParquetFile(out / schema.INTERACTIONS).metadata
    assert meta.num_row_groups == 3  # 120k rows in chunks of 50k
    assert pq.read_schema(out / schema.INTERACTIONS).equals(schema.INTERACTIONS_SCHEMA)
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_ranges_and_ids(tables):
    inter, items, users = tables
    assert inter["timestamp"].between(SPEC.start_timestamp, SPEC.end_timestamp).all()
    assert set(inter["item_id"]) <= set(items["item_id"])
    assert set(inter["user_id"]) <= set(users["user_id"])
    assert set(inter["weight"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert inter["weight"].nunique() == 5
    assert set(g for gs in items["genres"] for g in gs) <= set(GENRES)
    assert items["genres"].map(len).between(1, 3).all()


def test_zipf_head(tables):
    inter, _, _ = tables
    counts = inter["item_id"].value_counts().to_numpy()
    top1 = counts[: SPEC.items // 100].sum() / len(inter)
    top10 = counts[: SPEC.items // 10].sum() / len(inter)
    assert top1 > 0.2 and top10 > 0.5  # uniform would give 0.01 and 0.1
    # Rank-frequency on log-log falls steeply over the head.
    ranks = np.arange(1, 201)
    slope = np.polyfit(np.log(ranks), np.log(counts[:200]), 1)[0]
    assert slope < -0.5


def test_cold_items_and_late_users_respect_time(tables):
    inter, items, users = tables
    release = inter["item_id"].map(items.set_index("item_id")["release_timestamp"])
    assert (inter["timestamp"] >= release).all()
    cold = items.loc[items["release_timestamp"] > SPEC.start_timestamp, "item_id"]
    assert 0.05 < len(cold) / SPEC.items < 0.15
    assert inter["item_id"].isin(cold).sum() > 0  # cold items do get used after release
    join = inter["user_id"].map(users.set_index("user_id")["join_timestamp"])
    assert (inter["timestamp"] >= join).all()
    late = users.loc[users["join_timestamp"] > SPEC.start_timestamp, "user_id"]
    assert 0.05 < len(late) / SPEC.users < 0.15
    assert inter["user_id"].isin(late).sum() > 0


def test_content_carries_signal_about_factors(tables):
    _, items, _ = tables
    world = make_world(SPEC)
    topic = world.item_topic
    # Title words come from the item's topic vocabulary: the first word names the topic.
    first_word = items["title"].str.split(" ").str[0]
    assert pd.Series(topic).groupby(first_word.to_numpy()).nunique().max() == 1
    # Items sharing their main genre are closer in factor space than random pairs.
    f = world.item_factors / np.linalg.norm(world.item_factors, axis=1, keepdims=True)
    main = items["genres"].str[0].to_numpy()
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, SPEC.items, (2, 20_000))
    cos = (f[a] * f[b]).sum(axis=1)
    same = main[a] == main[b]
    assert cos[same].mean() > cos[~same].mean() + 0.2
    # The numeric feature is a noisy function of the factors.
    z = world.item_factors @ world.year_axis
    year = items["year"].to_numpy()
    ok = ~np.isnan(year)
    assert np.corrcoef(z[ok], year[ok])[0, 1] > 0.7


def test_interactions_follow_user_taste_and_drift(tmp_path: Path):
    spec = SynthSpec(**{**SPEC.as_dict(), "drift": 1.0, "interactions": 60_000})
    write_synth(spec, tmp_path, progress=False)
    inter = pq.read_table(tmp_path / schema.INTERACTIONS).to_pandas()
    world = make_world(spec)
    u = inter["user_id"].str[1:].astype(int).to_numpy()
    i = inter["item_id"].str[1:].astype(int).to_numpy()
    topic = world.item_topic[i]
    home = np.argmax(world.user_start @ world.centroids.T, axis=1)[u]
    final = np.argmax(world.user_end @ world.centroids.T, axis=1)[u]
    moved = home != final
    frac = (inter["timestamp"].to_numpy() - spec.start_timestamp) / spec.period_seconds
    early, late = moved & (frac < 0.2), moved & (frac > 0.8)
    # Far above the 1/K = 0.125 of taste-blind sampling, and shifting with the drift.
    assert (topic[early] == home[early]).mean() > 0.4
    assert (topic[late] == final[late]).mean() > (topic[early] == final[early]).mean() + 0.2
    assert (topic[late] == home[late]).mean() < (topic[early] == home[early]).mean() - 0.2
