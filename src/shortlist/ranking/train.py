"""Training the ranker on retrieved candidates, from a period the towers did not memorise.

Why the validation part: the towers were fitted on `train`, so their scores on train
pairs are overconfident (memorised). The ranker is fitted on requests from `validation`
instead (`shortlist.ranking.requests`), featurised over the candidates serving forms
(`shortlist.ranking.featurize`). Users fall into three disjoint folds by a hash of the
seed and their id: fitting, early stopping on NDCG@eval_k (`ranker.holdout_fraction`) and
the ship decision (`ranker.decision_fraction`, `shortlist.ranking.decision`). With
`ranker.ensemble` > 1 the ranker is the mean of that many networks
(`shortlist.ranking.fit`), each with its own seed and its own folds (bagging); every
request is featurised once and shared by the members. With `ranker.propensity_weighting`
and the logged exposures, the positives that came from a shown item are weighted by its
clipped inverse propensity (`shortlist.ranking.propensity`).

Beside the network, the item-item blend (`shortlist.ranking.item_item`) is fitted: EASE on
the towers' part, its weight chosen on the fitting and stopping users, judged on the
decision users like the network. Whichever of the two ships with the larger gain is what
the bundle serves (`summary["order"]`); neither shipping means the retrieval order.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from shortlist.config import Params, RankerParams
from shortlist.data import schema
from shortlist.ranking.candidates import Retrieval
from shortlist.ranking.cooccurrence import ItemNeighbours
from shortlist.ranking.decision import RankerDecision, decide
from shortlist.ranking.event_log import EventLog, popularity_block
from shortlist.ranking.features import ABLATABLE, FeatureSpace
from shortlist.ranking.featurize import RankerRows, featurize
from shortlist.ranking.fit import fit_network, predict
from shortlist.ranking.item_item import blend_rows, fit_ease, rows_item_item
from shortlist.ranking.model import DCNEnsemble
from shortlist.ranking.propensity import reweight
from shortlist.ranking.ranker import Ranker
from shortlist.ranking.request_metrics import per_request_metrics, request_metrics
from shortlist.ranking.requests import make_requests
from shortlist.ranking.sources import CandidateSources, popular_order, trend_popularity
from shortlist.ranking.tracking import epoch_logger, log_blend, log_result, log_start, ranker_run

if TYPE_CHECKING:
    from shortlist.models.two_tower import TwoTowerRetriever


def train_ranker(
    params: Params,
    retriever: TwoTowerRetriever,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame | None,
    *,
    catalog: Sequence[str] | None = None,
    seed: int | None = None,
    progress: bool = True,
    mlflow_run: bool = True,
    exposures: pd.DataFrame | None = None,
) -> tuple[Ranker, dict[str, Any]]:
    """Fit the ranker on validation requests over `retriever`'s candidates (the towers, or
    anything with their `item_ids`, `embed_items`, `embed_users` and `fingerprint`).

    Returns (Ranker, summary dict with the ship decision (`shortlist.ranking.decision`),
    the stop-set metrics of the ranker and of the retrieval-only order, the epoch
    history, row counts and timings). `exposures` (the feedback join's table) is read only
    with `ranker.propensity_weighting`.
    """
    rp = params.ranker
    seed = params.project.seed if seed is None else seed
    torch.set_num_threads(rp.threads)
    t0 = time.perf_counter()
    cat = [str(i) for i in (catalog if catalog is not None else retriever.item_ids)]
    groups = ["retrieval", "item", "user", *[g for g in ABLATABLE if g in rp.feature_groups]]
    seen_all = pd.concat([train, validation], ignore_index=True)
    space = FeatureSpace.fit(
        items,
        users,
        seen_all[schema.USER_ID].astype(str).unique(),
        windows_days=rp.popularity_windows_days,
        groups=groups,
        item_ids=cat,
    )
    log = EventLog(seen_all, space.item_index())
    if space.uses("cooccurrence") or rp.item_to_item_candidates:
        # Fitted on the towers' part only: never on the labels the ranker learns from.
        space.neighbours = _neighbours(train, space, rp)
    half_life = params.bundle.popularity_half_life_days
    sources = CandidateSources(
        neighbours=space.neighbours,
        popular_order=popular_order(trend_popularity(train, space.item_ids, half_life)),
        item_to_item=rp.item_to_item_candidates,
        popular=rp.popular_candidates,
    )
    retrieval = Retrieval(retriever, items, cat, users, params)
    labels, ips = validation, None
    if rp.propensity_weighting:
        labels, ips = reweight(validation, exposures, rp.propensity_clip)
    labels, users_used = sample_users(labels, rp.max_users, seed)
    reqs = make_requests(
        labels,
        train,
        space.item_index(),
        engagement=rp.positive_weight == "engagement",
        cut_points=rp.cut_points,
    )
    # Training rows come from every cut point (sampled negatives); early stopping and the
    # ship decision rank one request per user, the first cut, as serving ranks it (all
    # candidates; one request per user keeps the decision's requests independent).
    # Members then pick their own users from these.
    first = [r for r in reqs if r.cut == 0]
    train_rows = featurize(
        space,
        log,
        retrieval,
        reqs,
        n_candidates=rp.candidates,
        random_negatives=rp.random_negatives,
        hard_negatives=rp.hard_negatives,
        seed=seed,
        progress=progress,
        sources=sources,
    )
    serve_rows = featurize(
        space, log, retrieval, first, n_candidates=rp.candidates, seed=seed, sources=sources
    )
    space.fit_standardisation(train_rows.dense)
    train_rows.standardise(space)
    serve_rows.standardise(space)
    ks = sorted({10, rp.eval_k})
    user_ids = [r.user_id for r in reqs]
    serve_users = [r.user_id for r in first]
    key = f"ndcg@{rp.eval_k}"

    members, reports = [], []
    with ranker_run(params, mlflow_run) as run:
        if run is not None:
            log_start(rp, seed, len(reqs), len(first), getattr(retriever, "fingerprint", ""))
        for k in range(rp.ensemble):
            # Member k: its own seed, its own early-stopping users (bagging) and its own
            # decision users, disjoint from both: the stop users chose the epoch, so a
            # gain measured on them is biased upward.
            fit_mask, _, _ = _folds(user_ids, seed + k, rp)
            _, hold, judge = _folds(serve_users, seed + k, rp)
            fit_ex, stop_ex = train_rows.select(fit_mask), serve_rows.select(hold)
            decide_ex = serve_rows.select(judge)
            prefix = "" if k == 0 else f"member_{k}."
            on_epoch = epoch_logger(prefix) if run is not None else None
            model, history = fit_network(
                space, fit_ex, stop_ex, rp, seed=seed + k, progress=progress, on_epoch=on_epoch
            )
            members.append(model)
            stop_scores = predict(model, stop_ex)
            reports.append(
                {
                    "seed": seed + k,
                    "stop_ranker": request_metrics(stop_ex, stop_scores, ks),
                    "stop_retrieval_only": request_metrics(stop_ex, stop_ex.retrieval, ks),
                    "decide_per_request_ranker": per_request_metrics(
                        decide_ex, predict(model, decide_ex), [rp.eval_k]
                    )[key],
                    "decide_per_request_retrieval": per_request_metrics(
                        decide_ex, decide_ex.retrieval, [rp.eval_k]
                    )[key],
                    "decide_requests": len(decide_ex),
                    "best_epoch": int(np.argmax([h[key] for h in history]) + 1),
                    "fit_requests": len(fit_ex),
                    "fit_rows": int(len(fit_ex.labels)),
                    "fit_positives": int(fit_ex.labels.sum()),
                    "stop_requests": len(stop_ex),
                    "history": history,
                }
            )
        # The training rows are done with; at 10M events they are gigabytes the blend's
        # EASE fit below would otherwise sit on.
        del train_rows, fit_ex, stop_ex, decide_ex
        # Each member is scored on its own stop users; the means compare like with like.
        final = _mean_metrics([r["stop_ranker"] for r in reports])
        baseline = _mean_metrics([r["stop_retrieval_only"] for r in reports])
        decision = decide(
            np.concatenate([r.pop("decide_per_request_ranker") for r in reports]),
            np.concatenate([r.pop("decide_per_request_retrieval") for r in reports]),
            metric=key,
            min_z=rp.ship_min_z,
        )
        blended = None
        if rp.blend_weights:
            histories = _histories(log, space, first)
            blended = _blend(rp, _ease(train, space, rp), serve_rows, histories, seed, key)
            del histories
        order = _order(decision, blended)
        if run is not None:
            log_result(final, baseline, decision, reports[0], rp.eval_k)
            log_blend(blended, order)
    model = members[0] if len(members) == 1 else DCNEnsemble(members)
    # The serving snapshot below refits on everything; the ranked rows, the candidate
    # index and the training-time item-item table go before the refits allocate theirs.
    del serve_rows, retrieval, sources

    popularity = popularity_block(log, np.arange(space.n_items), log.end, space.windows_days)
    if space.neighbours is not None:
        # Serving snapshot as of the end of the log, as for popularity.
        space.neighbours = None
        space.neighbours = _neighbours(seen_all, space, rp)
    trend = trend_popularity(seen_all, space.item_ids, half_life)
    head = reports[0]
    item_item = _ease(seen_all, space, rp) if order == "blend" else None
    summary = {
        "shipped": order != "retrieval",
        "order": order,
        "decision": decision.to_dict(),
        "blend": None
        if blended is None
        else {**blended, "decision": blended["decision"].to_dict()},
        "stop_ranker": final,
        "stop_retrieval_only": baseline,
        "history": head["history"],
        "best_epoch": head["best_epoch"],
        "fit_requests": head["fit_requests"],
        "fit_rows": head["fit_rows"],
        "fit_positives": head["fit_positives"],
        "stop_requests": head["stop_requests"],
        "ensemble": [{k: v for k, v in r.items() if k != "history"} for r in reports],
        "feature_groups": groups,
        "n_dense": space.n_dense,
        "seconds": time.perf_counter() - t0,
        "seed": seed,
        "propensity_weighting": ips,
        "users": users_used,
    }
    meta = {
        "sources": {
            "item_to_item": rp.item_to_item_candidates,
            "popular": rp.popular_candidates,
        },
        "order": "blend" if order == "blend" else "ranker",
        "blend_weight": None if blended is None else blended["weight"],
        "snapshot_end": log.end,
        "tower_fingerprint": getattr(retriever, "fingerprint", ""),
        "training": {k: v for k, v in summary.items() if k != "history"},
    }
    ranker = Ranker(space, model, popularity, meta, trend=trend, item_item=item_item)
    return ranker, summary


def sample_users(
    frame: pd.DataFrame, max_users: int, seed: int
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Every row of at most `max_users` users (a seeded uniform sample; 0: all users), and
    how many there were and how many were kept."""
    users = frame[schema.USER_ID].unique()
    if not max_users or len(users) <= max_users:
        return frame, {"validation": len(users), "used": len(users)}
    keep = np.random.default_rng(seed).choice(users, max_users, replace=False)
    return frame[frame[schema.USER_ID].isin(keep)], {"validation": len(users), "used": max_users}


def _histories(log: EventLog, space: FeatureSpace, requests: Sequence[Any]) -> list[np.ndarray]:
    """Catalog positions of each request's history as of its time (what serving passes)."""
    index = space.item_index()
    out = []
    for r in requests:
        pos = [index.get(str(i), -1) for i in log.user_history(r.user_id, r.timestamp)[0]]
        out.append(np.asarray([p for p in pos if p >= 0], np.int64))
    return out


def _ease(interactions: pd.DataFrame, space: FeatureSpace, rp: RankerParams) -> ItemNeighbours:
    return fit_ease(
        interactions,
        space.item_index(),
        l2=rp.ease_l2,
        neighbours=rp.ease_neighbours,
        max_items=rp.ease_max_items,
    )


def _blend(
    rp: RankerParams,
    table: ItemNeighbours,
    rows: RankerRows,
    histories: Sequence[np.ndarray],
    seed: int,
    key: str,
) -> dict[str, Any]:
    """The blend's weight, chosen on the first member's fitting and stopping users, and
    its ship decision on that member's decision users (never seen by the choice)."""
    if len(rows) != len(histories):
        raise ValueError(f"{len(rows)} requests but {len(histories)} histories")
    fit_mask, hold, judge = _folds(rows.user_ids, seed, rp)

    def part(mask: np.ndarray) -> tuple[RankerRows, np.ndarray]:
        ex = rows.select(mask)
        hist = [histories[i] for i in np.flatnonzero(mask)]
        return ex, rows_item_item(table, hist, ex.rows, ex.offsets)

    def per_request(ex: RankerRows, scores: np.ndarray) -> np.ndarray:
        return per_request_metrics(ex, scores, [rp.eval_k])[key]

    ex, i2i = part(fit_mask | hold)
    chosen = {
        w: float(per_request(ex, blend_rows(ex.retrieval, i2i, ex.offsets, w)).mean())
        for w in rp.blend_weights
    }
    weight = max(chosen, key=lambda w: (chosen[w], -w))  # ties: the smaller weight
    ex, i2i = part(judge)
    decision = decide(
        per_request(ex, blend_rows(ex.retrieval, i2i, ex.offsets, weight)),
        per_request(ex, ex.retrieval),
        metric=key,
        min_z=rp.ship_min_z,
        name="item-item blend",
    )
    return {"weight": weight, "validation": chosen, "decision": decision}


def _order(decision: RankerDecision, blended: dict[str, Any] | None) -> str:
    """What serves: the network or the blend when it ships (the larger mean on the
    decision users when both do), else the retrieval order."""
    best, score = "retrieval", -np.inf
    if decision.shipped:
        best, score = "ranker", decision.ranker
    if blended is not None and blended["decision"].shipped and blended["decision"].ranker > score:
        best = "blend"
    return best


def _neighbours(
    interactions: pd.DataFrame, space: FeatureSpace, rp: RankerParams
) -> ItemNeighbours:
    return ItemNeighbours.fit(
        interactions,
        space.item_index(),
        neighbours=rp.cooccurrence_neighbours,
        shrink=rp.cooccurrence_shrink,
    )


def _mean_metrics(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def _folds(
    user_ids: Sequence[str], seed: int, rp: RankerParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fit, stop, decide) masks over requests, by a deterministic uniform draw in [0, 1)
    per user (a hash of seed and user id): a user's requests all fall in one fold."""
    draw = np.asarray(
        [
            int(hashlib.sha256(f"{seed}:{u}".encode()).hexdigest()[:8], 16) / 0x100000000
            for u in user_ids
        ]
    )
    hold = draw < rp.holdout_fraction
    judge = (draw >= rp.holdout_fraction) & (draw < rp.holdout_fraction + rp.decision_fraction)
    return ~hold & ~judge, hold, judge
