"""Request -> candidates -> rank -> served list, entirely within ONE bundle.

Every function here takes the `ServingBundle` the request grabbed at its start and never
looks at the holder again, so a swap in the middle of a request cannot mix two bundles:
the user tower, the index, the id map and the ranker all come from the same object.

Retrieval: user tower -> index top-N (N = params.ranker.candidates, widened when filters
remove too much) -> with a ranker, the union with its extra candidate sources (item-to-item
neighbours of the history, the recent trend) -> ranker -> at most `serving.max_cold_share`
of k for items without interactions -> top k. Users the bundle does
not know and who bring no known recent items get the bundle's popularity prior.

Propensity (logged with every impression, the raw material for de-biasing): the
probability that the serving policy puts this item at this position, given the request.
- `recommend(..., explore=True)` (what the app serves) with
  `serving.exploration_slots > 0` (default 2): the slot policy of
  `shortlist.serving.explore`: the greedy list except a few slots below the protected
  top, drawn from the ranked tail and the under-exposed items; greedy items have
  propensity 1.0, drawn ones their exact draw probability. The list's expected cost
  against the greedy list is returned with it.
- `explore=False` (canary, monitor and model-registry callers, which measure the model)
  or no slots: deterministic top-k, every propensity exactly 1.0.
- `serving.exploration_temperature > 0` overrides both: the list is sampled from a
  Plackett-Luce model over the ranked candidates with weights softmax(score / T) (Gumbel
  top-k), and the propensity of position j is exp(s_j / T) / sum over the candidates not
  yet placed: the exact probability of that sequential draw, given the earlier ones.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from shortlist.config import Params
from shortlist.data import schema
from shortlist.models.vectors import vector_width, widen_queries
from shortlist.ranking.cold_share import surplus_cold
from shortlist.ranking.features import FEATURE_HISTORY
from shortlist.ranking.sources import CandidateSources, catalog_maps, extra_columns
from shortlist.serving.explore import ExplorationParams, explore
from shortlist.serving.schemas import RecommendRequest

if TYPE_CHECKING:
    import pandas as pd

    from shortlist.bundle.bundle import LoadedBundle
    from shortlist.models.two_tower import TwoTowerRetriever
    from shortlist.ranking.ranker import Ranker

MAX_WIDEN_ROUNDS = 4  # candidate pool grows x4 per round when filters leave < k items


@dataclass
class ServingBundle:
    """A loaded bundle plus the lookups serving needs, built once before the swap."""

    bundle: LoadedBundle
    bundle_id: str
    location: str
    row_of: Mapping[str, int]  # item id -> index row
    genres: np.ndarray | None  # per index row: sequence of genre strings, or None
    popular_rows: np.ndarray  # index rows by popularity prior, most popular first
    encoder: QueryEncoder | None = None  # over this bundle's retriever and users
    # per index row: no interaction in the towers' training data (capped per list)
    cold: np.ndarray | None = None
    # The ranker's extra candidate sources and the maps between its catalog and index
    # rows (ranker position per row, row per ranker position); None without them.
    sources: CandidateSources | None = None
    source_maps: tuple[np.ndarray, np.ndarray] | None = None
    loaded_at: float = field(default_factory=time.time)
    canary: dict[str, Any] | None = None

    @property
    def n_items(self) -> int:
        return len(self.row_of)


def prepare(bundle: LoadedBundle, location: str) -> ServingBundle:
    """Precompute the id map, per-row genres and the popularity order of a bundle.

    Runs in the serving process's loader thread beside live requests, so work over the
    whole catalog goes through `shortlist.bundle.gentle` (a slice at a time)."""
    from shortlist.bundle import gentle

    item_ids = np.asarray(bundle.item_ids)
    if item_ids.dtype != object or (len(item_ids) and not isinstance(item_ids[0], str)):
        item_ids = item_ids.astype(str).astype(object)
    row_of = gentle.PositionMap(item_ids)
    genres = None
    items = getattr(bundle, "items", None)
    if items is not None and "genres" in getattr(items, "columns", ()):
        if gentle.same_sequence(items[schema.ITEM_ID].array, item_ids):
            genres = items["genres"].to_numpy(dtype=object)  # row-aligned, as bundles are
        else:
            aligned = items.drop_duplicates(schema.ITEM_ID).set_index(schema.ITEM_ID)["genres"]
            genres = aligned.reindex(item_ids).to_numpy(dtype=object)
    popularity = getattr(bundle, "popularity", None)
    if popularity is None or len(popularity) != len(item_ids):
        popular_rows = np.arange(len(item_ids))
    else:
        popular_rows = np.argsort(-np.asarray(popularity, dtype=np.float64), kind="stable")
    users = getattr(bundle, "users", None)
    if users is not None and "user_id" in getattr(users, "columns", ()):
        users = users.assign(user_id=users["user_id"].astype(str))
        users = users.drop_duplicates("user_id").set_index("user_id")
    else:
        users = None
    state = getattr(bundle.retriever, "state", None)
    cold = None if state is None else state.item_index(item_ids) == 0
    sources, source_maps = None, None
    ranker = getattr(bundle, "ranker", None)
    if ranker is not None and ranker.candidate_sources().active:
        sources = ranker.candidate_sources()
        source_maps = catalog_maps(ranker.space.item_ids, item_ids)
    return ServingBundle(
        cold=cold,
        sources=sources,
        source_maps=source_maps,
        bundle=bundle,
        # The indexed vectors' width (verified at load): embedding + popularity column, if any.
        encoder=QueryEncoder(bundle.retriever, users, width=bundle.manifest.embedding_dim),
        bundle_id=str(bundle.bundle_id),
        location=location,
        row_of=row_of,
        genres=genres,
        popular_rows=popular_rows,
    )


def warm_up(sb: ServingBundle, params: Params) -> None:
    """Serve one known user and one anonymous request from a freshly loaded bundle before
    it goes live: the first forward passes allocate, and a bundle that cannot answer is
    refused while the old one still serves (errors propagate to the loader)."""
    from shortlist.serving.schemas import RecommendRequest

    rng = np.random.default_rng(0)
    known = next(iter(sb.bundle.histories), None)
    for user in ([known] if known is not None else []) + ["warm-up-unknown-user"]:
        recommend(sb, RecommendRequest(user_id=user, k=10, exclude_seen=True), params, rng)


@dataclass
class Served:
    """One served list: rows of the bundle's index with their scores and propensities."""

    strategy: str
    policy: str
    rows: np.ndarray
    scores: np.ndarray
    retrieval_scores: np.ndarray | None
    propensities: np.ndarray
    item_ids: list[str]
    explored: np.ndarray | None = None  # bool per position: drawn by an exploration slot
    exploration_cost: float = 0.0  # greedy score sum - expected served score sum
    bandit_position: int | None = None  # the position the bandit's cold-section draw took


def _pick(
    sb: ServingBundle,
    rows: np.ndarray,
    scores: np.ndarray,
    k: int,
    params: Params,
    rng: np.random.Generator,
    explore_on: bool,
) -> tuple[np.ndarray, np.ndarray, str, np.ndarray, float]:
    """Positions into the best-first candidates `rows` to show, with propensities, policy,
    explored flags and the expected cost (see the module docstring for which policy)."""
    s = params.serving
    if s.exploration_temperature > 0 or not explore_on or s.exploration_slots == 0:
        pick, prop, policy = choose(scores, k, s.exploration_temperature, rng)
        return pick, prop, policy, np.zeros(len(pick), dtype=bool), 0.0
    ep = ExplorationParams.from_serving(s)
    under = None
    popularity = getattr(sb.bundle, "popularity", None)
    if popularity is not None and len(rows):
        pop = np.asarray(popularity, dtype=np.float64)[rows]
        tail = pop[max(k - ep.slots, 0) : k - ep.slots + ep.pool]  # what the slots draw from
        under = pop <= np.quantile(tail if len(tail) else pop, ep.underexposed_quantile)
    if sb.cold is not None and len(rows):
        under = sb.cold[rows] if under is None else under | sb.cold[rows]
    x = explore(scores, k, ep, rng, under)
    return x.order, x.propensities, x.policy, x.explored, x.expected_cost


def choose(
    scores: np.ndarray, k: int, temperature: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, str]:
    """Pick k of the candidates (given best first): indices into `scores`, propensities, policy."""
    k = min(k, len(scores))
    if temperature <= 0 or k == 0:
        return np.arange(k), np.ones(k), "deterministic"
    logits = np.asarray(scores, dtype=np.float64) / temperature
    logits = logits - logits.max()
    gumbel = rng.gumbel(size=len(logits))
    order = np.argsort(-(logits + gumbel), kind="stable")[:k]  # a Plackett-Luce draw
    weights = np.exp(logits)
    remaining = weights.sum() - np.concatenate([[0.0], np.cumsum(weights[order])[:-1]])
    return order, weights[order] / remaining, "plackett_luce"


def _allowed(
    sb: ServingBundle, rows: np.ndarray, excluded: set[int], genres: set[str] | None
) -> np.ndarray:
    keep = rows >= 0
    if excluded:
        keep &= ~np.isin(rows, np.fromiter(excluded, dtype=np.int64, count=len(excluded)))
    if genres is not None:
        if sb.genres is None:
            return np.zeros(len(rows), dtype=bool)
        for i, r in enumerate(rows):
            if keep[i]:
                g = sb.genres[r]
                keep[i] = g is not None and any(x in genres for x in g)
    return keep


def _history(sb: ServingBundle, req: RecommendRequest) -> tuple[list[str], bool]:
    """The user's known history (stored + recent, unknown ids dropped) and whether known."""
    stored = sb.bundle.histories.get(req.user_id) if req.user_id is not None else None
    history = [i for i in (stored or []) if i in sb.row_of]
    history += [i for i in (req.recent_items or []) if i in sb.row_of]
    return history, bool(stored)


def seen_rows(sb: ServingBundle, user_id: str | None, history: list[str]) -> list[int]:
    """Index rows `exclude_seen` removes: every item the user ever interacted with (the
    bundle's full seen set, not only the recent history the models read) plus the
    request's own recent items. Bundles without a seen set fall back to the history."""
    rows = [sb.row_of[i] for i in history]
    seen = getattr(sb.bundle, "seen", None)
    if seen is not None:
        rows.extend(seen.rows(user_id).tolist())
    return rows


def _search(sb: ServingBundle, query: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    from shortlist.index.ann import search

    scores, rows = search(sb.bundle.index, np.ascontiguousarray(query, dtype=np.float32), n)
    return np.asarray(scores[0]), np.asarray(rows[0])


def retrieve(
    sb: ServingBundle,
    query: np.ndarray,
    want: int,
    n: int,
    excluded: set[int],
    genres: set[str] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top candidates for a query vector, filtered; widens the search until `want` remain."""
    n = min(sb.n_items, n + len(excluded))
    for _ in range(MAX_WIDEN_ROUNDS + 1):
        scores, rows = _search(sb, query, n)
        keep = _allowed(sb, rows, excluded, genres)
        if keep.sum() >= want or n >= sb.n_items:
            break
        n = min(sb.n_items, n * 4)
    return rows[keep], scores[keep]


def recommend(
    sb: ServingBundle,
    req: RecommendRequest,
    params: Params,
    rng: np.random.Generator,
    *,
    now: float | None = None,
    explore: bool = False,
) -> Served:
    """Serve one /recommend request from one bundle (`now`: request time, the context;
    `explore`: apply the exploration slots, as the app does)."""
    history, known = _history(sb, req)
    excluded: set[int] = set()
    if req.exclude_seen:
        excluded.update(seen_rows(sb, req.user_id, history))
    excluded.update(sb.row_of[i] for i in req.exclude_items or [] if i in sb.row_of)
    genres = set(req.genres) if req.genres else None
    s = params.serving
    explore_on = explore and s.exploration_slots > 0 and s.exploration_temperature <= 0

    if not known and not history:
        want = req.k + (s.exploration_pool if explore_on else 0)
        rows, scores = _popular(sb, want, excluded, genres)
        pick, prop, policy, explored, cost = _pick(sb, rows, scores, req.k, params, rng, explore)
        return _served(
            sb, "popularity", policy, rows[pick], scores[pick], None, prop, explored, cost
        )

    query = user_query(sb, req.user_id, history, time.time() if now is None else now)
    n = max(params.ranker.candidates, req.k)
    rows, retrieval = retrieve(sb, query, req.k, n, excluded, genres)
    # The search was widened by the excluded items; the ranker sees the top n that remain,
    # as offline evaluation, the canary and the ranker's own training do (not up to
    # n + |history| candidates, which would also cost a long history twice the ranker time).
    rows, retrieval = rows[:n], retrieval[:n]
    ranker = getattr(sb.bundle, "ranker", None)
    if ranker is not None and sb.sources is not None and len(rows):
        rows, retrieval = _with_sources(sb, ranker, history, query, rows, retrieval, excluded)
        if genres is not None:
            keep = _allowed(sb, rows, set(), genres)
            rows, retrieval = rows[keep], retrieval[keep]
    scores = retrieval
    if ranker is not None and len(rows):
        candidate_ids = np.asarray(sb.bundle.item_ids)[rows]
        context = {
            "timestamp": int(time.time() if now is None else now),
            "retrieval_scores": retrieval,  # the index's scores: the ranker need not recompute
        }
        ranked = np.asarray(
            ranker.score(req.user_id or "", history, candidate_ids, context), dtype=np.float64
        )
        order = np.argsort(-ranked, kind="stable")
        rows, retrieval, scores = rows[order], retrieval[order], ranked[order]
    if sb.cold is not None and len(rows):  # items without interactions: a bounded share
        keep = ~surplus_cold(sb.cold[rows], req.k, params.serving.max_cold_share)
        rows, retrieval, scores = rows[keep], retrieval[keep], scores[keep]
    pick, prop, policy, explored, cost = _pick(sb, rows, scores, req.k, params, rng, explore)
    return _served(
        sb, "personalized", policy, rows[pick], scores[pick], retrieval[pick], prop, explored, cost
    )


def _with_sources(
    sb: ServingBundle,
    ranker: Ranker,
    history: list[str],
    query: np.ndarray,
    rows: np.ndarray,
    retrieval: np.ndarray,
    excluded: set[int],
) -> tuple[np.ndarray, np.ndarray]:
    """The towers' candidates followed by what the ranker's extra sources add, each scored
    by the index vectors as the index scores (`shortlist.ranking.sources`)."""
    pos_of_row, row_of_pos = sb.source_maps
    hist = ranker.space.item_positions(history[-FEATURE_HISTORY:])
    ex = np.fromiter(excluded, dtype=np.int64, count=len(excluded))
    more = extra_columns(sb.sources, hist[hist >= 0], rows, ex, pos_of_row, row_of_pos)
    if not len(more):
        return rows, retrieval
    extra = sb.bundle.item_vectors[more] @ np.asarray(query, np.float32)[0]
    return np.r_[rows, more], np.r_[retrieval, extra].astype(np.float32)


class QueryEncoder:
    """The bundle's user tower with the per-user feature encoding done once at load.

    Same preprocessing as `TwoTowerRetriever.embed_users` (its FeatureState, history
    matrix and context encoder, then `net.query_forward`), minus the per-request pandas
    work of encoding the user feature table; the tests compare both paths. Queries come
    out `width` wide: the popularity column of the index (when it has one) gets a 1, so the
    index scores dot / temperature + weight * log popularity, as offline evaluation does.
    """

    def __init__(
        self, retriever: TwoTowerRetriever, users: pd.DataFrame | None, width: int | None = None
    ) -> None:
        self.retriever = retriever
        self.users = users
        self.width = int(width or vector_width(retriever))
        self.fast = all(hasattr(retriever, a) for a in ("state", "net", "history_len"))
        self.rows: dict[str, int] = {}
        if not self.fast:
            return
        ids: list[str] = []
        if users is not None and len(users):
            ids = users.index.astype(str).tolist()
            enc = retriever.state.encode_users(ids, users.reset_index())
            self.user_idx, self.user_feats = enc["user_idx"], enc["user_feats"]
        self.rows = dict(zip(ids, range(len(ids)), strict=True))

    def embed(self, user_id: str, history: list[str], now: float) -> np.ndarray:
        """(1, width) query vector of one request."""
        return widen_queries(self._embed(user_id, history, now), self.width)

    def _embed(self, user_id: str, history: list[str], now: float) -> np.ndarray:
        if not self.fast:
            users = None
            if self.users is not None and user_id in self.users.index:
                users = self.users.loc[[user_id]].reset_index()
            return self.retriever.embed_users([user_id], [history], users=users, timestamps=[now])
        import torch

        from shortlist.models.features import encode_context
        from shortlist.models.two_tower import history_matrix

        r = self.rows.get(user_id)
        if r is None:
            enc = self.retriever.state.encode_users([user_id], None)
            user_idx, feats = enc["user_idx"], enc["user_feats"]
        else:
            user_idx, feats = self.user_idx[r : r + 1], self.user_feats[r : r + 1]
        hist = history_matrix([history], self.retriever.state, self.retriever.history_len)
        ctx = encode_context([now], 1)
        with torch.inference_mode():
            v = self.retriever.net.query_forward(
                torch.from_numpy(np.ascontiguousarray(user_idx)),
                torch.from_numpy(np.ascontiguousarray(feats)),
                torch.from_numpy(hist),
                torch.from_numpy(ctx),
            )
        return v.numpy()


def user_query(sb: ServingBundle, user_id: str | None, history: list[str], now: float):
    """(1, width) query for the bundle's index: user-tower embedding (id, anonymous = "";
    features, history, request time) and the popularity column's 1 when the index has one."""
    uid = user_id or ""
    return sb.encoder.embed(uid, history, now)


def similar_items(
    sb: ServingBundle, item_id: str, k: int, params: Params, rng: np.random.Generator
) -> Served:
    """The k items nearest to `item_id` in this bundle's item-embedding space."""
    row = sb.row_of[item_id]
    query = np.array(sb.bundle.item_vectors[row : row + 1], dtype=np.float32)
    query[:, int(sb.bundle.retriever.embedding_dim) :] = 0.0  # embedding similarity only
    rows, scores = retrieve(sb, query, k, k + 1, {row}, None)
    pick, prop, policy = choose(scores, k, params.serving.exploration_temperature, rng)
    return _served(sb, "personalized", policy, rows[pick], scores[pick], scores[pick], prop)


def _popular(
    sb: ServingBundle, k: int, excluded: set[int], genres: set[str] | None
) -> tuple[np.ndarray, np.ndarray]:
    popularity = getattr(sb.bundle, "popularity", None)
    chosen: list[np.ndarray] = []
    got, start, chunk = 0, 0, max(4 * k, 256)
    while got < k and start < sb.n_items:
        rows = sb.popular_rows[start : start + chunk]
        rows = rows[_allowed(sb, rows, excluded, genres)]
        chosen.append(rows)
        got += len(rows)
        start += chunk
    rows = np.concatenate(chosen)[:k] if chosen else np.zeros(0, dtype=np.int64)
    if popularity is None:
        scores = np.zeros(len(rows))
    else:
        scores = np.asarray(popularity, dtype=np.float64)[rows]
    return rows, scores


def _served(
    sb: ServingBundle,
    strategy: str,
    policy: str,
    rows: np.ndarray,
    scores: np.ndarray,
    retrieval: np.ndarray | None,
    propensities: np.ndarray,
    explored: np.ndarray | None = None,
    exploration_cost: float = 0.0,
) -> Served:
    item_ids = np.asarray(sb.bundle.item_ids)[rows].astype(str).tolist()
    if explored is None:
        explored = np.zeros(len(item_ids), dtype=bool)
    return Served(
        strategy,
        policy,
        rows,
        scores,
        retrieval,
        propensities,
        item_ids,
        explored,
        float(exploration_cost),
    )
