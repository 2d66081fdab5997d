"""Canary checks on a loaded bundle, before it may go live (and on the live one, later).

(a) ANN recall: the index's top-10/top-100 against exact search over the same item
    embeddings, for real user embeddings (users with a stored history).
(b) Live-path recall: for held-out users (their most recent interaction removed), the
    recommendations served through the serving code (user tower -> index -> the ranker's
    candidate union -> ranker)
    recover the held-out item about as often as scoring the catalog exactly with the
    model directly (items re-embedded, histories rebuilt by the model's own
    preprocessing). A gap beyond the tolerance means serving and the model disagree:
    preprocessing skew, stale embeddings, a bad index.
(c) Consistency: the manifest's fingerprint is the loaded towers', and a sample of the
    stored item embeddings is reproduced by re-embedding those items with that tower.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from shortlist.config import Params
from shortlist.index.ann import exact_search, measure_recall
from shortlist.models.vectors import serving_item_vectors, serving_query_vectors
from shortlist.ranking.features import FEATURE_HISTORY
from shortlist.ranking.sources import catalog_maps, extra_columns

if TYPE_CHECKING:
    from shortlist.bundle.bundle import LoadedBundle


def _sample(values: list[str], n: int, seed: int) -> list[str]:
    if len(values) <= n:
        return list(values)
    rng = np.random.default_rng(seed)
    return [values[i] for i in sorted(rng.choice(len(values), n, replace=False))]


def _users_frame(bundle: LoadedBundle, user_ids: list[str]) -> pd.DataFrame | None:
    users = bundle.users
    if users is None or "user_id" not in getattr(users, "columns", ()):
        return None
    table = users.assign(user_id=users["user_id"].astype(str)).drop_duplicates("user_id")
    return table.set_index("user_id").reindex(user_ids).reset_index()


def ann_recall(bundle: LoadedBundle, params: Params) -> dict[str, Any]:
    """(a) recall@10 and @100 of the bundle's index against exact search."""
    ids = _sample(
        sorted(u for u, h in bundle.histories.items() if h), params.canary.users, params.canary.seed
    )
    if not ids:
        return {"passed": False, "users": 0, "reason": "the bundle holds no user histories"}
    histories = [bundle.histories[u] for u in ids]
    queries = serving_query_vectors(
        bundle.retriever,
        ids,
        histories,
        users=_users_frame(bundle, ids),
        width=bundle.item_vectors.shape[1],
    )
    m = measure_recall(bundle.index, bundle.item_vectors, queries, (10, 100))
    r10, r100 = m["recall@10"], m["recall@100"]
    slo = params.canary.recall_slo
    return {
        "passed": bool(r10 >= slo and r100 >= slo),
        "users": len(ids),
        "users_requested": params.canary.users,
        "recall@10": round(r10, 4),
        "recall@100": round(r100, 4),
        "strict_recall@10": round(m["strict_recall@10"], 4),
        "strict_recall@100": round(m["strict_recall@100"], 4),
        "slo": slo,
        "ann_queries_per_second": round(m["queries_per_second"], 1),
    }


def _held_out(
    bundle: LoadedBundle, params: Params
) -> tuple[list[str], list[list[str]], list[str], list[int], list[list[int]]]:
    """Users with >= 2 stored items: (ids, histories without the last, the last item, its
    time, the history's timestamps)."""
    table = bundle.history_table
    if table is None or not len(table):
        return [], [], [], [], []
    lengths = table["item_ids"].map(len)
    eligible = table[lengths >= 2]
    ids = _sample(
        eligible["user_id"].astype(str).tolist(), params.canary.users, params.canary.seed + 1
    )
    rows = eligible.set_index(eligible["user_id"].astype(str)).loc[ids]
    histories = [list(map(str, h[:-1])) for h in rows["item_ids"]]
    targets = [str(h[-1]) for h in rows["item_ids"]]
    times = [int(t[-1]) for t in rows["timestamps"]]
    stamps = [[int(x) for x in t[:-1]] for t in rows["timestamps"]]
    return ids, histories, targets, times, stamps


def _hit_rate(recommended: list[list[str]], targets: list[str]) -> float:
    return float(np.mean([t in set(r) for r, t in zip(recommended, targets, strict=True)]))


def _live_recommendations(
    bundle: LoadedBundle,
    params: Params,
    ids: list[str],
    histories: list[list[str]],
    times: list[int],
    k: int,
) -> list[list[str]]:
    """Through the serving code itself, on a view of the bundle without the held-out items."""
    import dataclasses

    from shortlist.serving.recommend import prepare, recommend
    from shortlist.serving.schemas import RecommendRequest

    # Without the bundle's full seen sets: they hold the held-out item too, and the
    # offline side excludes exactly the (truncated) histories, as this view then does.
    view = dataclasses.replace(
        bundle,
        histories={**bundle.histories, **dict(zip(ids, histories, strict=True))},
        seen=None,
    )
    sb = prepare(view, bundle.location)
    rng = np.random.default_rng(params.canary.seed)
    out = []
    for uid, ts in zip(ids, times, strict=True):
        served = recommend(
            sb, RecommendRequest(user_id=uid, k=k, exclude_seen=True), params, rng, now=ts
        )
        out.append([str(i) for i in served.item_ids])
    return out


def _offline_recommendations(
    bundle: LoadedBundle,
    params: Params,
    ids: list[str],
    histories: list[list[str]],
    times: list[int],
    stamps: list[list[int]],
    k: int,
) -> list[list[str]]:
    """The model directly: re-embedded catalog, exact scores, the model's own history code."""
    retriever = bundle.retriever
    frame = pd.DataFrame(
        {
            "user_id": np.repeat(ids, [len(h) for h in histories]),
            "item_id": [i for h in histories for i in h],
            "timestamp": np.array([t for ts in stamps for t in ts], dtype=np.int64),
        }
    )
    rebuilt = retriever.histories_from(frame, ids)
    # The score the bundle's index serves (with the inference popularity column when it has
    # one), searched exactly: candidates and the ranker's retrieval-score feature as the
    # index gives them to the live path, minus the approximation.
    width = bundle.item_vectors.shape[1]
    serve_q = serving_query_vectors(
        retriever, ids, rebuilt, users=_users_frame(bundle, ids), timestamps=times, width=width
    )
    serve_v = serving_item_vectors(
        retriever, bundle.items, width=width, batch_size=params.index.embed_batch_size
    )
    n = min(len(bundle.item_ids), max(params.ranker.candidates, k))
    row_of = {item: r for r, item in enumerate(bundle.item_ids.tolist())}
    seen = [{row_of[i] for i in h if i in row_of} for h in histories]
    width = min(len(bundle.item_ids), n + max((len(s) for s in seen), default=0))
    scores, rows = exact_search(serve_v, serve_q, width)
    maps, sources = None, None
    if bundle.ranker is not None and bundle.ranker.candidate_sources().active:
        sources = bundle.ranker.candidate_sources()
        maps = catalog_maps(bundle.ranker.space.item_ids, bundle.item_ids)
    out = []
    for uid, hist, ts, user_seen, srow, rrow, q in zip(
        ids, histories, times, seen, scores, rows, serve_q, strict=True
    ):
        keep = [(r, s) for r, s in zip(rrow, srow, strict=True) if r >= 0 and r not in user_seen][
            :n
        ]
        cand = np.array([r for r, _ in keep], dtype=np.int64)
        cand_scores = np.array([s for _, s in keep], dtype=np.float64)
        if maps is not None and len(cand):  # the ranker's extra candidate sources
            hist_pos = bundle.ranker.space.item_positions(hist[-FEATURE_HISTORY:])
            seen_rows = np.fromiter(user_seen, dtype=np.int64, count=len(user_seen))
            more = extra_columns(sources, hist_pos[hist_pos >= 0], cand, seen_rows, *maps)
            cand = np.r_[cand, more]
        if bundle.ranker is not None and len(cand):
            ctx = {"timestamp": ts, "retrieval_scores": (serve_v[cand] @ q).astype(np.float32)}
            ranked = bundle.ranker.score(uid, hist, bundle.item_ids[cand], ctx)
            cand = cand[np.argsort(-np.asarray(ranked, dtype=np.float64), kind="stable")]
        else:
            cand = cand[np.argsort(-cand_scores, kind="stable")]
        out.append([str(i) for i in bundle.item_ids[cand[:k]]])
    return out


def live_path_recall(bundle: LoadedBundle, params: Params) -> dict[str, Any]:
    """(b) recall@K of each held-out item: served path vs the model scored exactly."""
    ids, histories, targets, times, stamps = _held_out(bundle, params)
    if not ids:
        return {
            "passed": False,
            "users": 0,
            "reason": "no user has two interactions to hold one out",
        }
    k = min(params.canary.live_path_k, len(bundle.item_ids))
    live = _hit_rate(_live_recommendations(bundle, params, ids, histories, times, k), targets)
    offline = _hit_rate(
        _offline_recommendations(bundle, params, ids, histories, times, stamps, k), targets
    )
    gap = abs(live - offline)
    return {
        "passed": bool(gap <= params.canary.live_path_tolerance),
        "users": len(ids),
        "k": k,
        "live_recall": round(live, 4),
        "offline_recall": round(offline, 4),
        "gap": round(gap, 4),
        "tolerance": params.canary.live_path_tolerance,
        "ranker": bundle.ranker is not None,
    }


def consistency(bundle: LoadedBundle, params: Params) -> dict[str, Any]:
    """(c) same training run: fingerprint match and stored embeddings reproduced."""
    fp_ok = bundle.retriever.fingerprint == bundle.manifest.model_fingerprint
    n = len(bundle.item_ids)
    rng = np.random.default_rng(params.canary.seed + 2)
    rows = np.sort(rng.choice(n, min(n, params.canary.reembed_sample), replace=False))
    fresh = serving_item_vectors(
        bundle.retriever, bundle.items.iloc[rows], width=bundle.item_vectors.shape[1]
    )
    stored = np.asarray(bundle.item_vectors[rows], dtype=np.float32)
    ids_ok = bool(
        (bundle.items["item_id"].astype(str).to_numpy()[rows] == bundle.item_ids[rows]).all()
    )
    diff = float(np.abs(fresh - stored).max()) if len(rows) else 0.0
    return {
        "passed": bool(fp_ok and ids_ok and diff <= params.canary.reembed_tolerance),
        "fingerprint_matches": bool(fp_ok),
        "model_fingerprint": bundle.manifest.model_fingerprint,
        "items_reembedded": len(rows),
        "max_abs_diff": diff,
        "id_map_aligned": ids_ok,
        "tolerance": params.canary.reembed_tolerance,
    }


def run_checks(bundle: LoadedBundle, params: Params) -> dict[str, Any]:
    """All three checks; `passed` only when every one passed. Names what failed."""
    t0 = time.perf_counter()
    checks = {
        "consistency": consistency(bundle, params),
        "ann_recall": ann_recall(bundle, params),
        "live_path": live_path_recall(bundle, params),
    }
    reasons = [f"{name}: {_describe(name, c)}" for name, c in checks.items() if not c.get("passed")]
    return {
        "bundle_id": bundle.bundle_id,
        "passed": not reasons,
        "reasons": reasons,
        "recall@10": checks["ann_recall"].get("recall@10"),
        "recall@100": checks["ann_recall"].get("recall@100"),
        "checks": checks,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _describe(name: str, c: dict[str, Any]) -> str:
    if "reason" in c:
        return c["reason"]
    if name == "ann_recall":
        return f"recall@10 {c['recall@10']} / @100 {c['recall@100']} below the SLO {c['slo']}"
    if name == "live_path":
        return (
            f"live recall {c['live_recall']} vs offline {c['offline_recall']}: gap {c['gap']} "
            f"> {c['tolerance']}"
        )
    return (
        f"fingerprint match {c['fingerprint_matches']}, id map aligned {c['id_map_aligned']}, "
        f"re-embedding differs by {c['max_abs_diff']:.2e} (tolerance {c['tolerance']})"
    )
