"""Synthetic interaction data with known structure, for scale tests and sanity checks.

The generative story (every step vectorised numpy; deterministic for a seed):

- Items live in latent space: K topic centroids (unit vectors), each item = its topic's
  centroid + a residual. Inside each topic, popularity is Zipf-shaped over a random rank
  order (exponent ``zipf_exponent``; drawn by a closed-form inverse CDF, O(1) per draw,
  with exact probabilities kept in `World.item_popularity`). A fraction of items is
  *cold*: released late in the period and never interacted with before release.
- Users have a taste vector near a home topic and drift linearly toward a second topic
  over the period (``drift`` = how far by the end, clipped at 1). A fraction of users
  join late. Activity is a power law over a random user order.
- Each interaction: a user by activity, a time uniform in [join, end], a topic by
  softmax(taste(t) . centroid + log topic mass), then ``candidates`` items from that topic
  by popularity, of which the released one with the largest taste . item + Gumbel noise
  wins (so p(item) ~ popularity x exp(affinity), sampled without touching the catalog).
  The weight is a 1-5 rating that rises with the affinity.
- Content carries signal about the latent factors: genres are the top directions of the
  item factor, title words come from the topic's own vocabulary, ``year`` is a noisy
  function of the item factor. Users get an age and a segment derived from their taste.

Interactions stream to Parquet in chunks of ``chunk_rows`` (one row group each, each
from its own seed, so ``threads`` workers change nothing in the output), so 10M rows over
1M items are generated in bounded memory (benchmarks/synth.py measures it).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shortlist.data import schema

if TYPE_CHECKING:
    from shortlist.config import SynthParams

GENRES = (
    "Action",
    "Adventure",
    "Animation",
    "Children",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "SciFi",
    "Thriller",
    "War",
    "Western",
    "Noir",
)
TOPIC_WORDS = 10  # vocabulary size of each topic's titles
COMMON_WORDS = 40  # words any title may carry, no signal
AFFINITY_SCALE = 4.0  # norm of a taste vector: how peaked preferences are
RESIDUAL_SCALE = 0.5  # item residual around its topic centroid
SUB_BATCH = 1 << 18  # rows sampled at once inside a chunk (bounds the temporaries)
SEGMENTS = 8
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


@dataclass(frozen=True)
class SynthSpec:
    """Every knob of one synthetic dataset (sizes, seed and params.synth)."""

    users: int
    items: int
    interactions: int
    seed: int = 0
    factors: int = 16
    topics: int = 32
    candidates: int = 4
    zipf_exponent: float = 1.1
    cold_item_fraction: float = 0.05
    late_user_fraction: float = 0.05
    period_days: int = 180
    drift: float = 0.3
    chunk_rows: int = 1_000_000
    start_timestamp: int = 1_640_995_200
    threads: int = 2  # chunk workers; the output does not depend on it

    @classmethod
    def from_params(cls, synth: SynthParams, **overrides: Any) -> SynthSpec:
        """From a `SynthParams` section; keyword overrides win (the CLI's sizes and seed)."""
        values = {k: v for k, v in synth.model_dump().items() if k in cls.__dataclass_fields__}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def period_seconds(self) -> int:
        return self.period_days * 86_400

    @property
    def end_timestamp(self) -> int:
        return self.start_timestamp + self.period_seconds

    def as_dict(self) -> dict[str, Any]:
        """The spec as recorded in snapshot.json (threads left out: it changes nothing)."""
        out = asdict(self)
        out.pop("threads")
        return out


@dataclass
class World:
    """The latent ground truth a dataset was sampled from (kept for tests and analysis)."""

    centroids: np.ndarray  # (K, d) float32, unit norm
    item_factors: np.ndarray  # (M, d) float32
    item_topic: np.ndarray  # (M,) int32
    item_popularity: np.ndarray  # (M,) float64: p(item) before affinity, sums to 1
    item_release: np.ndarray  # (M,) int64 unix seconds; start_timestamp unless cold
    user_pair: np.ndarray  # (U, 2, d) float32: taste at the start, taste drifted toward
    user_activity: np.ndarray  # (U,) float64: p(user), sums to 1
    user_join: np.ndarray  # (U,) int64 unix seconds
    genre_axes: np.ndarray  # (d, G) float32
    year_axis: np.ndarray  # (d,) float32
    # sampling tables: items grouped by topic, in popularity order inside each topic
    by_topic: np.ndarray  # (M,) item indices
    topic_offsets: np.ndarray  # (K + 1,) into by_topic
    topic_sizes: np.ndarray  # (K,) float64
    log_topic_mass: np.ndarray  # (K, 1) float32
    fallback_item: np.ndarray  # (K,) the most popular warm (never cold) item of each topic
    users_by_activity: np.ndarray  # (U,) user indices, most active first

    @property
    def user_start(self) -> np.ndarray:
        """(U, d) taste at the start of the period."""
        return self.user_pair[:, 0]

    @property
    def user_end(self) -> np.ndarray:
        """(U, d) taste the drift moves toward."""
        return self.user_pair[:, 1]

    def taste(self, users: np.ndarray, t: np.ndarray, spec: SynthSpec) -> np.ndarray:
        """Taste vectors of `users` at times `t` (linear drift start -> end)."""
        mix = (t - spec.start_timestamp).astype(np.float32)
        mix *= np.float32(spec.drift / spec.period_seconds)
        np.clip(mix, 0.0, 1.0, out=mix)
        both = self.user_pair.take(users, axis=0)  # one gather of both vectors
        out = both[:, 1] - both[:, 0]
        out *= mix[:, None]
        out += both[:, 0]
        return out


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


# Ranks are drawn as floor(X) for X on [1, n + 1) with density ~ x^-s: a Zipf-shaped law
# with a closed-form inverse CDF (O(1) per draw, no table search) and exact probabilities.
def _power_rank(u: np.ndarray, n: np.ndarray | float, s: float) -> np.ndarray:
    """0-based ranks in [0, n) for uniforms `u`."""
    q = 1.0 - s
    if abs(q) < 1e-9:
        x = np.exp(u * np.log(n + 1.0))
    else:
        x = (1.0 + u * ((n + 1.0) ** q - 1.0)) ** (1.0 / q)
    return np.minimum(x.astype(np.int64) - 1, np.asarray(n, dtype=np.int64) - 1)


def _power_probs(n: int, s: float) -> np.ndarray:
    """P(rank = j), j = 0..n-1, of `_power_rank`."""
    edges = np.arange(1, n + 2, dtype=np.float64)
    q = 1.0 - s
    cdf = np.log(edges) if abs(q) < 1e-9 else edges**q - 1.0
    return np.diff(cdf) / (cdf[-1] - cdf[0])


USER_ACTIVITY_EXPONENT = 0.5  # power-law user activity; the heaviest user ~0.06% at 500k users


def make_world(spec: SynthSpec) -> World:
    """Draw the latent structure: topics, item and user factors, popularity, release times."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0]))
    d, k, m, u = spec.factors, spec.topics, spec.items, spec.users
    centroids = _unit(rng.standard_normal((k, d)))
    item_topic = rng.integers(0, k, size=m).astype(np.int32)
    item_factors = rng.standard_normal((m, d), dtype=np.float32)
    item_factors *= RESIDUAL_SCALE / math.sqrt(d)
    item_factors += centroids[item_topic]

    # Items are grouped by topic; the position inside the topic is the popularity rank
    # (item indices are random with respect to everything, so the order is too).
    sizes = np.bincount(item_topic, minlength=k)
    by_topic = np.argsort(item_topic, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    mass = sizes / m  # p(topic) before affinity
    popularity = np.empty(m)
    for t in np.nonzero(sizes)[0]:  # K small loops over vectorised work
        popularity[by_topic[offsets[t] : offsets[t + 1]]] = mass[t] * _power_probs(
            int(sizes[t]), spec.zipf_exponent
        )

    start, period = spec.start_timestamp, spec.period_seconds
    cold = rng.random(m) < spec.cold_item_fraction
    if cold.all():
        cold[by_topic[0]] = False
    release = np.full(m, start, dtype=np.int64)
    release[cold] = start + (rng.uniform(0.5, 0.95, cold.sum()) * period).astype(np.int64)
    # Most popular warm item per topic: the first warm position of each topic's range.
    warm_pos = np.flatnonzero(~cold[by_topic])
    first = np.searchsorted(warm_pos, offsets[:-1])
    fallback = np.full(k, by_topic[warm_pos[0]], dtype=np.int64)
    ok = first < len(warm_pos)
    ok[ok] &= warm_pos[first[ok]] < offsets[1:][ok]
    fallback[ok] = by_topic[warm_pos[first[ok]]]

    home = rng.integers(0, k, size=u)
    target = rng.integers(0, k, size=u)
    noise = 0.3 * rng.standard_normal((u, d), dtype=np.float32)
    user_start = AFFINITY_SCALE * _unit(centroids[home] + noise)
    noise = 0.3 * rng.standard_normal((u, d), dtype=np.float32)
    user_end = AFFINITY_SCALE * _unit(centroids[target] + noise)
    users_by_activity = rng.permutation(u)
    activity = np.empty(u)
    activity[users_by_activity] = _power_probs(u, USER_ACTIVITY_EXPONENT)
    late = rng.random(u) < spec.late_user_fraction
    join = np.full(u, start, dtype=np.int64)
    join[late] = start + (rng.uniform(0.5, 0.95, late.sum()) * period).astype(np.int64)

    genre_axes = _unit(rng.standard_normal((len(GENRES), d))).T.copy()
    year_axis = _unit(rng.standard_normal(d))
    with np.errstate(divide="ignore"):
        log_mass = np.log(mass).astype(np.float32)[:, None]
    return World(
        centroids=centroids,
        item_factors=item_factors,
        item_topic=item_topic,
        item_popularity=popularity,
        item_release=release,
        user_pair=np.ascontiguousarray(np.stack([user_start, user_end], axis=1)),
        user_activity=activity,
        user_join=join,
        genre_axes=genre_axes,
        year_axis=year_axis,
        by_topic=by_topic,
        topic_offsets=offsets,
        topic_sizes=sizes.astype(np.float64),
        log_topic_mass=log_mass,
        fallback_item=fallback,
        users_by_activity=users_by_activity,
    )


def sample_interactions(
    world: World, spec: SynthSpec, n: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """`n` interactions as index arrays: user, item, timestamp, weight (see module doc)."""
    rank = _power_rank(rng.random(n), float(spec.users), USER_ACTIVITY_EXPONENT)
    users = world.users_by_activity[rank]
    join = world.user_join[users]
    t = join + (rng.random(n) * (spec.end_timestamp - join)).astype(np.int64)
    taste = world.taste(users, t, spec)

    # Topic ~ softmax(centroid . taste + log mass); laid out (K, n) so the reductions
    # run over contiguous rows.
    logits = world.centroids @ taste.T
    logits += world.log_topic_mass
    logits -= logits.max(axis=0)
    np.exp(logits, out=logits)
    for j in range(1, len(logits)):  # row-wise running sum: far faster than cumsum(axis=0)
        logits[j] += logits[j - 1]
    r = (1.0 - rng.random(n, dtype=np.float32)) * logits[-1]  # in (0, total]: never empty
    topic = np.minimum((logits < r).sum(axis=0), spec.topics - 1)
    del logits

    # Candidates by popularity inside the topic; the released one with the best
    # affinity + Gumbel noise wins: p(item | topic) ~ popularity x exp(affinity).
    c = spec.candidates
    local = _power_rank(rng.random((n, c)), world.topic_sizes[topic][:, None], spec.zipf_exponent)
    cand = world.by_topic[world.topic_offsets[topic][:, None] + local]
    # `take` on the flat index is several times faster than fancy indexing with (n, c).
    vectors = world.item_factors.take(cand.ravel(), axis=0).reshape(n, c, -1)
    affinity = np.einsum("nd,ncd->nc", taste, vectors)
    del vectors
    gumbel = rng.random((n, c), dtype=np.float32)
    np.log(gumbel + 1e-12, out=gumbel)
    np.negative(gumbel, out=gumbel)
    np.log(gumbel + 1e-12, out=gumbel)
    score = affinity - gumbel
    score[world.item_release[cand] > t[:, None]] = -np.inf
    pick = np.argmax(score, axis=1)
    rows = np.arange(n)
    items = cand[rows, pick]
    chosen = affinity[rows, pick]
    none = np.isneginf(score[rows, pick])
    if none.any():
        items[none] = world.fallback_item[topic[none]]
        chosen[none] = np.einsum("nd,nd->n", taste[none], world.item_factors[items[none]])
    rating = np.rint(1.5 + 0.8 * chosen + rng.normal(0.0, 0.7, n).astype(np.float32))
    return {
        "user": users,
        "item": items,
        "timestamp": t,
        "weight": np.clip(rating, 1, 5).astype(np.float32),
    }


def _ids(prefix: str, n: int) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(np.arange(n)), pa.string()), "")


def _chunk_table(
    world: World,
    spec: SynthSpec,
    index: int,
    seed: np.random.SeedSequence,
    user_ids: pa.Array,
    item_ids: pa.Array,
) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = min(spec.chunk_rows, spec.interactions - index * spec.chunk_rows)
    parts = [
        sample_interactions(world, spec, min(SUB_BATCH, rows - s), rng)
        for s in range(0, rows, SUB_BATCH)
    ]
    cat = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return pa.Table.from_arrays(
        [
            user_ids.take(pa.array(cat["user"])),
            item_ids.take(pa.array(cat["item"])),
            pa.array(cat["timestamp"], pa.int64()),
            pa.array(cat["weight"], pa.float32()),
        ],
        schema=schema.INTERACTIONS_SCHEMA,
    )


def iter_interaction_tables(world: World, spec: SynthSpec, threads: int = 1) -> Iterator[pa.Table]:
    """The interactions, one table per chunk of `chunk_rows`, in order.

    Each chunk has its own seed, so chunks can be generated by `threads` workers (numpy
    and Arrow release the GIL) without changing the output; at most threads + 1 chunks
    are in memory at once.
    """
    user_ids, item_ids = _ids("u", spec.users), _ids("i", spec.items)
    n_chunks = max(1, math.ceil(spec.interactions / spec.chunk_rows))
    seeds = np.random.SeedSequence([spec.seed, 1]).spawn(n_chunks)
    if threads <= 1:
        for i, seed in enumerate(seeds):
            yield _chunk_table(world, spec, i, seed, user_ids, item_ids)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="synth") as pool:
        pending: deque = deque()
        for i, seed in enumerate(seeds):
            pending.append(pool.submit(_chunk_table, world, spec, i, seed, user_ids, item_ids))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _words(rng: np.random.Generator, n: int) -> list[str]:
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:
        syl = rng.choice(_SYLLABLES, size=rng.integers(2, 4))
        w = "".join(syl).capitalize()
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def item_table(world: World, spec: SynthSpec) -> pa.Table:
    """Items: id, title (topic words), genres (top factor directions), year, release time."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 2]))
    m, k = len(world.item_topic), spec.topics
    vocab = _words(rng, k * TOPIC_WORDS + COMMON_WORDS)
    topic_vocab = pa.array(vocab[: k * TOPIC_WORDS])
    common = pa.array(vocab[k * TOPIC_WORDS :])
    first = world.item_topic * TOPIC_WORDS + rng.integers(0, TOPIC_WORDS, m)
    second = world.item_topic * TOPIC_WORDS + rng.integers(0, TOPIC_WORDS, m)
    two = pc.binary_join_element_wise(topic_vocab.take(first), topic_vocab.take(second), " ")
    three = pc.binary_join_element_wise(two, common.take(rng.integers(0, COMMON_WORDS, m)), " ")
    title = pc.if_else(pa.array(rng.random(m) < 0.3), three, two)

    scores = world.item_factors @ world.genre_axes  # (m, G)
    top3 = np.empty((m, 3), dtype=np.int64)
    s = np.empty((m, 3), dtype=np.float32)
    for j in range(3):  # three argmax passes beat sorting a million short rows
        top3[:, j] = np.argmax(scores, axis=1)
        s[:, j] = scores[np.arange(m), top3[:, j]]
        scores[np.arange(m), top3[:, j]] = -np.inf
    keep = np.ones_like(top3, dtype=bool)
    keep[:, 1] = s[:, 1] > np.median(s[:, 1])
    keep[:, 2] = keep[:, 1] & (s[:, 2] > np.quantile(s[:, 2], 0.9))
    offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int32)
    genres = pa.ListArray.from_arrays(pa.array(offsets), pa.array(GENRES).take(top3[keep]))

    z = world.item_factors @ world.year_axis
    year = np.rint(1950.0 + 70.0 / (1.0 + np.exp(-2.0 * z)) + rng.normal(0.0, 2.0, m))
    year_arr = pa.array(year, pa.float64(), mask=rng.random(m) < 0.01)
    return pa.Table.from_arrays(
        [_ids("i", m), title, genres, year_arr, pa.array(world.item_release, pa.int64())],
        schema=pa.schema(
            [
                pa.field(schema.ITEM_ID, pa.string(), nullable=False),
                pa.field("title", pa.string()),
                pa.field("genres", pa.list_(pa.string())),
                pa.field("year", pa.float64()),
                pa.field("release_timestamp", pa.int64()),
            ]
        ),
    )


def user_table(world: World, spec: SynthSpec) -> pa.Table:
    """Users: id, age and segment (both functions of the starting taste), join time."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 3]))
    u, d = world.user_start.shape
    age_axis = _unit(rng.standard_normal(d))
    age = np.clip(np.rint(35 + 12 * (world.user_start @ age_axis) / AFFINITY_SCALE * 2), 13, 80)
    age = np.clip(age + rng.integers(-3, 4, u), 13, 80).astype(np.int64)
    prototypes = _unit(rng.standard_normal((SEGMENTS, d)))
    segment = np.argmax(world.user_start @ prototypes.T, axis=1)
    segment_names = pa.array([f"s{i}" for i in range(SEGMENTS)])
    return pa.Table.from_arrays(
        [
            _ids("u", u),
            pa.array(age, pa.int64()),
            segment_names.take(segment),
            pa.array(world.user_join, pa.int64()),
        ],
        schema=pa.schema(
            [
                pa.field(schema.USER_ID, pa.string(), nullable=False),
                pa.field("age", pa.int64()),
                pa.field("segment", pa.string()),
                pa.field("join_timestamp", pa.int64()),
            ]
        ),
    )


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_synth(
    spec: SynthSpec, directory: str | Path, progress: bool = True
) -> tuple[dict[str, str], dict[str, int]]:
    """Generate into a local directory; returns (sha256 per table, rows per table).

    Each table is written under a temporary name and renamed, so a crash never leaves a
    half-written table under its real name.
    """
    from tqdm import tqdm

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    world = make_world(spec)
    checksums, rows = {}, {}

    def finish(name: str, tmp: Path, n: int) -> None:
        os.replace(tmp, out / name)
        checksums[name] = file_sha256(out / name)
        rows[name] = n

    def write_features(name: str, make: Any) -> tuple[str, Path, int]:
        table = make(world, spec)
        tmp = out / f".{name}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        return name, tmp, table.num_rows

    # Item and user tables are built beside the first interaction chunks (own seeds:
    # the bytes do not depend on the overlap).
    from concurrent.futures import ThreadPoolExecutor

    side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synth-features")
    features = [
        side.submit(write_features, schema.ITEMS, item_table),
        side.submit(write_features, schema.USERS, user_table),
    ]
    tmp = out / f".{schema.INTERACTIONS}.tmp"
    n_chunks = max(1, math.ceil(spec.interactions / spec.chunk_rows))
    written = 0
    try:
        with pq.ParquetWriter(tmp, schema.INTERACTIONS_SCHEMA, compression="zstd") as writer:
            for table in tqdm(
                iter_interaction_tables(world, spec, spec.threads),
                total=n_chunks,
                desc="synth interactions",
                unit="chunk",
                disable=not progress or None,
            ):
                writer.write_table(table, row_group_size=spec.chunk_rows)
                written += table.num_rows
        for future in features:
            finish(*future.result())
    except BaseException:
        side.shutdown(wait=True, cancel_futures=True)
        for name in schema.TABLES:
            (out / f".{name}.tmp").unlink(missing_ok=True)
        raise
    side.shutdown(wait=True)
    finish(schema.INTERACTIONS, tmp, written)
    return checksums, rows
