"""Training the ranker on retrieved candidates, from a period the towers did not memorise.

Why the validation part: the towers were fitted on `train`, so their scores on train
pairs are overconfident (memorised). The ranker is fitted on requests from `validation`
instead: per validation user, one request at the time of their first validation event
and up to `ranker.cut_points` - 1 more at later ones, features as of that time (the
`EventLog` over train + validation hides everything at or after it), positives = the
user's validation items from then on. A held-out share of those users
(`ranker.holdout_fraction`) is used only for early stopping on NDCG@eval_k, ranked over
the retrieved candidates exactly as serving ranks them. With `ranker.ensemble` > 1 the
ranker is the mean of that many networks, each with its own seed and its own held-out
users (bagging); every request is featurised once and shared by the members.

Rows: the candidates of the request as serving forms them, the towers' top N plus what the
extra sources add (`shortlist.ranking.sources`, fitted on the towers' part only), sampled
as hard negatives (retrieved, not taken), plus `ranker.random_negatives` uniformly drawn
catalog items. Positives are weighted by
engagement (the rating), negatives by 1 (Covington et al. 2016). Positives retrieval
missed are not rows (the ranker never sees them at serving) but count in the NDCG
denominator, so early stopping measures the funnel, not the ranker alone.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from shortlist.config import Params
from shortlist.data import schema
from shortlist.ranking.candidates import Retrieval
from shortlist.ranking.cooccurrence import ItemNeighbours
from shortlist.ranking.decision import decide
from shortlist.ranking.features import (
    ABLATABLE,
    FEATURE_HISTORY,
    EventLog,
    FeatureSpace,
    Request,
    popularity_block,
)
from shortlist.ranking.sources import CandidateSources, popular_order, trend_popularity
from shortlist.tracking import metric_key


@dataclass
class LabeledRequest:
    user_id: str
    timestamp: int
    positives: dict[int, float]  # catalog position -> engagement weight
    exclude: np.ndarray  # catalog positions never ranked for this user (already seen)
    cut: int = 0  # which of the user's cut points (0: at their first event of the part)


@dataclass
class Examples:
    """Feature rows of many requests; request r owns rows offsets[r]:offsets[r+1]."""

    dense: np.ndarray
    user_idx: np.ndarray
    item_idx: np.ndarray
    rows: np.ndarray  # catalog position of each row
    labels: np.ndarray
    weights: np.ndarray
    retrieval: np.ndarray  # retrieval score of each row
    retrieved: np.ndarray  # bool: row came from retrieval (not a random negative)
    offsets: np.ndarray
    n_relevant: np.ndarray  # positives per request in the catalog (retrieved or not)
    user_ids: list[str]

    def request(self, r: int) -> slice:
        return slice(int(self.offsets[r]), int(self.offsets[r + 1]))

    def __len__(self) -> int:
        return len(self.user_ids)


def make_requests(
    part: pd.DataFrame,
    seen: pd.DataFrame,
    item_index: dict[str, int],
    *,
    engagement: bool = True,
    cut_points: int = 1,
) -> list[LabeledRequest]:
    """Requests of each user of `part`: at their first timestamp there (cut 0), positives =
    their items, and with `cut_points` > 1 up to that many more cuts spread evenly over
    their items in time, each at an item's timestamp with the items from it on as
    positives (what came before is history, through the event log).

    `seen` holds interactions the evaluation protocol excludes from ranking (the user's
    earlier items), so candidates never repeat them.
    """
    p = part.assign(
        u=part[schema.USER_ID].astype(str),
        pos=part[schema.ITEM_ID].astype(str).map(item_index),
    )
    seen_pos = (
        seen.assign(
            u=seen[schema.USER_ID].astype(str), pos=seen[schema.ITEM_ID].astype(str).map(item_index)
        )
        .dropna(subset=["pos"])
        .groupby("u")["pos"]
        .apply(lambda s: np.unique(s.to_numpy(np.int64)))
        .to_dict()
    )
    out = []
    for u, g in p.groupby("u", sort=True):
        g = g.sort_values(schema.TIMESTAMP, kind="stable")
        times = g[schema.TIMESTAMP].to_numpy(np.int64)
        starts = _cut_starts(times, cut_points)
        g = g.assign(_t=times)
        for cut, start in enumerate(starts):
            t = int(times[start])
            later = g[(g["_t"] >= t)].dropna(subset=["pos"])
            w = (
                later.groupby("pos")[schema.WEIGHT].max()
                if engagement
                else later.groupby("pos").size() * 0 + 1
            )
            if cut and not len(w):
                continue
            out.append(
                LabeledRequest(
                    user_id=str(u),
                    timestamp=t,
                    positives={int(k): float(v) for k, v in w.items()},
                    exclude=seen_pos.get(u, np.array([], np.int64)),
                    cut=cut,
                )
            )
    return out


def _cut_starts(times: np.ndarray, cut_points: int) -> list[int]:
    """Indices (into time-sorted events) where the cuts fall: the first event, then up to
    `cut_points` - 1 more spread evenly, each at a new timestamp (a cut inside a run of
    equal timestamps would put some of them in the history and some in the labels)."""
    starts = [0]
    n = len(times)
    for j in range(1, max(cut_points, 1)):
        k = int(round(j * n / cut_points))
        while 0 < k < n and times[k] == times[k - 1]:
            k += 1
        if k < n and k > starts[-1]:
            starts.append(k)
    return starts


def featurize(
    space: FeatureSpace,
    log: EventLog,
    retrieval: Retrieval,
    requests: Sequence[LabeledRequest],
    *,
    n_candidates: int,
    random_negatives: int = 0,
    hard_negatives: int = 0,
    seed: int = 0,
    progress: bool = False,
    sources: CandidateSources | None = None,
) -> Examples:
    """Candidates and point-in-time features for each request (raw or standardised, as
    `space` is fitted). Every time-dependent input comes from `log` as of the request.

    Candidates are the towers' top `n_candidates` then, with `sources`, what the extra
    sources add (`shortlist.ranking.sources`), each scored by the towers as well."""
    rng = np.random.default_rng(seed)
    hists = [log.user_history(r.user_id, r.timestamp)[0] for r in requests]
    queries = retrieval.embed_queries(
        [r.user_id for r in requests], hists, [r.timestamp for r in requests]
    )
    index = space.item_index()
    excl = []
    for r, h in zip(requests, hists, strict=True):
        hp = np.array([index.get(str(i), -1) for i in h], dtype=np.int64)
        excl.append(np.union1d(r.exclude, hp[hp >= 0]))
    cands = retrieval.top_n(queries, n_candidates, excl)
    if sources is not None and sources.active:
        widened = []
        for (rows, scores), h, ex, q in zip(cands, hists, excl, queries, strict=True):
            hp = space.item_positions(list(h)[-FEATURE_HISTORY:])
            more = sources.extra(hp[hp >= 0], rows, ex)
            widened.append(
                (np.r_[rows, more].astype(np.int64), np.r_[scores, retrieval.score_rows(q, more)])
            )
        cands = widened
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("d", "u", "i", "rows", "y", "w", "s", "ret")
    }
    offsets = [0]
    n_rel = []
    it = zip(requests, hists, cands, excl, queries, strict=True)
    for req, hist, (rows, scores), ex, q in tqdm(
        it, total=len(requests), desc="ranker features", disable=not progress
    ):
        if hard_negatives and len(rows) > hard_negatives:
            # Training rows: every retrieved positive plus a sample of the retrieved
            # negatives (order kept, so ranks stay those of the full candidate list).
            is_pos = np.isin(rows, np.fromiter(req.positives, np.int64))
            neg = np.flatnonzero(~is_pos)
            pick = rng.choice(neg, size=min(hard_negatives, len(neg)), replace=False)
            keep = np.sort(np.r_[np.flatnonzero(is_pos), pick])
            full_scores = scores
            rows, scores = rows[keep], scores[keep]
        else:
            full_scores = scores
        n_ret = len(rows)
        if random_negatives:
            taken = np.union1d(np.union1d(rows, ex), np.fromiter(req.positives, np.int64))
            pool = np.setdiff1d(np.arange(space.n_items), taken)
            neg = rng.choice(pool, size=min(random_negatives, len(pool)), replace=False)
            rows = np.r_[rows, np.sort(neg)].astype(np.int64)
            scores = np.r_[scores, retrieval.score_rows(q, np.sort(neg))].astype(np.float32)
        fr = Request(req.user_id, req.timestamp, list(hist), rows, scores, n_retrieved=n_ret)
        fr.reference_scores = full_scores
        pop = None
        if space.uses("popularity"):
            pop = popularity_block(log, rows, log.asof(req.timestamp), space.windows_days)
        dense, uidx, iidx = space.transform(fr, pop)
        y = np.isin(rows, np.fromiter(req.positives, np.int64)).astype(np.float32)
        w = np.array([req.positives.get(int(i), 1.0) for i in rows], np.float32)
        w = np.where(y > 0, w, 1.0).astype(np.float32)
        for k, v in zip(
            ("d", "u", "i", "rows", "y", "w", "s", "ret"),
            (
                dense,
                np.full(len(rows), uidx),
                iidx,
                rows,
                y,
                w,
                scores,
                np.arange(len(rows)) < n_ret,
            ),
            strict=True,
        ):
            parts[k].append(np.asarray(v))
        offsets.append(offsets[-1] + len(rows))
        n_rel.append(len(set(req.positives) - set(ex.tolist())))
    cat = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in parts.items()}
    return Examples(
        dense=cat["d"].reshape(len(cat["y"]), -1).astype(np.float32)
        if len(cat["y"])
        else np.zeros((0, space.n_dense), np.float32),
        user_idx=cat["u"].astype(np.int64),
        item_idx=cat["i"].astype(np.int64),
        rows=cat["rows"].astype(np.int64),
        labels=cat["y"].astype(np.float32),
        weights=cat["w"].astype(np.float32),
        retrieval=cat["s"].astype(np.float32),
        retrieved=cat["ret"].astype(bool),
        offsets=np.asarray(offsets, np.int64),
        n_relevant=np.asarray(n_rel, np.int64),
        user_ids=[r.user_id for r in requests],
    )


def request_metrics(
    ex: Examples, scores: np.ndarray, ks: Sequence[int], *, retrieved_only: bool = True
) -> dict[str, float]:
    """Mean Recall/NDCG@k over requests when each request's rows are ordered by `scores`.

    Only retrieved rows are ranked (as in serving); the denominator is every positive of
    the request, so items retrieval missed count as misses.
    """
    per = per_request_metrics(ex, scores, ks, retrieved_only=retrieved_only)
    return {k: float(v.mean()) if len(v) else 0.0 for k, v in per.items()}


def per_request_metrics(
    ex: Examples, scores: np.ndarray, ks: Sequence[int], *, retrieved_only: bool = True
) -> dict[str, np.ndarray]:
    """Recall/NDCG@k of each request with positives (see `request_metrics`)."""
    from shortlist.eval import metrics as M

    kmax = max(ks)
    hits, n_rel = [], []
    for r in range(len(ex)):
        sl = ex.request(r)
        if ex.n_relevant[r] == 0:
            continue
        keep = ex.retrieved[sl] if retrieved_only else np.ones(sl.stop - sl.start, bool)
        s, y = scores[sl][keep], ex.labels[sl][keep]
        order = np.lexsort((np.arange(len(s)), -s))[:kmax]
        h = np.zeros(kmax, bool)
        h[: len(order)] = y[order] > 0
        hits.append(h)
        n_rel.append(ex.n_relevant[r])
    if not hits:
        return {f"{m}@{k}": np.zeros(0) for k in ks for m in ("recall", "ndcg")}
    per = M.ranking_metrics(np.stack(hits), np.asarray(n_rel), ks)
    return {k: np.asarray(v) for k, v in per.items() if not k.startswith("hitrate")}


def _standardise(space: FeatureSpace, ex: Examples) -> Examples:
    ex.dense = ((ex.dense - space.mean) / space.std).astype(np.float32)
    return ex


def fit_network(
    space: FeatureSpace,
    fit: Examples,
    stop: Examples,
    rp: Any,
    *,
    seed: int,
    progress: bool = False,
    on_epoch: Any = None,
):
    """Train the DCN with the weighted logistic loss; early stopping on stop-set NDCG@k.

    Returns (best model, per-epoch history list of dicts).
    """
    import torch

    from shortlist.ranking.model import DCNRanker, weighted_logistic_loss

    torch.manual_seed(seed)
    model = DCNRanker(
        space.n_dense,
        len(space.user_ids),
        space.n_items,
        id_dim=rp.id_dim,
        cross_layers=rp.cross_layers,
        hidden_dims=rp.hidden_dims,
        dropout=rp.dropout,
        use_ids=space.uses("ids"),
        cross_rank=rp.cross_rank,
    )
    opt = Adam(list(model.parameters()), lr=rp.learning_rate, weight_decay=rp.weight_decay)
    tensors = [
        torch.from_numpy(a)
        for a in (fit.dense, fit.user_idx, fit.item_idx, fit.labels, fit.weights)
    ]
    gen = torch.Generator().manual_seed(seed)
    key = f"ndcg@{rp.eval_k}"
    best, best_state, bad, history = -1.0, copy.deepcopy(model.state_dict()), 0, []
    for epoch in range(1, rp.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(fit.labels), generator=gen)
        total, weight = 0.0, 0.0
        for s in tqdm(
            range(0, len(perm), rp.batch_size),
            desc=f"ranker epoch {epoch}",
            disable=not progress,
            leave=False,
        ):
            b = perm[s : s + rp.batch_size]
            d, u, i, y, w = (t[b] for t in tensors)
            loss = weighted_logistic_loss(model(d, u, i), y, w)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * float(w.sum())
            weight += float(w.sum())
        metrics = request_metrics(stop, predict(model, stop), sorted({10, rp.eval_k}))
        row = {"epoch": epoch, "loss": total / max(weight, 1e-12), **metrics}
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if metrics[key] > best:
            best, best_state, bad = metrics[key], copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if bad >= rp.early_stopping_patience:
                break
    model.load_state_dict(best_state)
    return model.eval(), history


class Adam:
    """Adam (Kingma & Ba 2015) with L2 weight decay, as torch.optim.Adam computes it.

    Written out because constructing any torch.optim optimizer imports torch._dynamo,
    which costs tens of seconds per process where bytecode is not cached; the ranker is
    small enough that this loop is as fast.
    """

    def __init__(
        self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0
    ):
        import torch

        self.params = [p for p in params if p.requires_grad]
        self.lr, self.betas, self.eps, self.wd = lr, betas, eps, weight_decay
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        import torch

        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        with torch.no_grad():
            for p, m, v in zip(self.params, self.m, self.v, strict=True):
                if p.grad is None:
                    continue
                g = p.grad if not self.wd else p.grad + self.wd * p
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                p.addcdiv_(m / c1, (v / c2).sqrt_().add_(self.eps), value=-self.lr)


def predict(model: Any, ex: Examples, batch: int = 65_536) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(ex.labels), batch):
            sl = slice(s, s + batch)
            out.append(
                model(
                    torch.from_numpy(ex.dense[sl]),
                    torch.from_numpy(ex.user_idx[sl]),
                    torch.from_numpy(ex.item_idx[sl]),
                ).numpy()
            )
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _neighbours(interactions: pd.DataFrame, space: FeatureSpace, rp) -> ItemNeighbours:
    return ItemNeighbours.fit(
        interactions,
        space.item_index(),
        neighbours=rp.cooccurrence_neighbours,
        shrink=rp.cooccurrence_shrink,
    )


def _select(ex: Examples, keep: np.ndarray) -> Examples:
    """The requests of `ex` where `keep` is True, in order."""
    idx = np.flatnonzero(keep)
    lengths = np.diff(ex.offsets)[idx]
    rows = (
        np.concatenate([np.arange(ex.offsets[r], ex.offsets[r + 1]) for r in idx])
        if len(idx)
        else np.zeros(0, np.int64)
    )
    return Examples(
        dense=ex.dense[rows],
        user_idx=ex.user_idx[rows],
        item_idx=ex.item_idx[rows],
        rows=ex.rows[rows],
        labels=ex.labels[rows],
        weights=ex.weights[rows],
        retrieval=ex.retrieval[rows],
        retrieved=ex.retrieved[rows],
        offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
        n_relevant=ex.n_relevant[idx],
        user_ids=[ex.user_ids[r] for r in idx],
    )


def _mean_metrics(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def _user_draws(user_ids: Sequence[str], seed: int) -> np.ndarray:
    """A deterministic uniform draw in [0, 1) per user (hash of seed and user id)."""
    return np.asarray(
        [
            int(hashlib.sha256(f"{seed}:{u}".encode()).hexdigest()[:8], 16) / 0x100000000
            for u in user_ids
        ]
    )


def _holdout(user_ids: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Deterministic user-level holdout mask (hash of seed and user id)."""
    return _user_draws(user_ids, seed) < fraction


def _folds(user_ids: Sequence[str], seed: int, rp) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fit, stop, decide) masks over requests, by a per-user draw: a user's requests all
    fall in one fold."""
    draw = _user_draws(user_ids, seed)
    hold = draw < rp.holdout_fraction
    judge = (draw >= rp.holdout_fraction) & (draw < rp.holdout_fraction + rp.decision_fraction)
    return ~hold & ~judge, hold, judge


def train_ranker(
    params: Params,
    retriever: Any,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame | None,
    *,
    catalog: Sequence[str] | None = None,
    seed: int | None = None,
    progress: bool = True,
    mlflow_run: bool = True,
):
    """Fit the ranker on validation requests over `retriever`'s candidates.

    Returns (Ranker, summary dict with the ship decision (`shortlist.ranking.decision`),
    the stop-set metrics of the ranker and of the retrieval-only order, the epoch
    history, row counts and timings).
    """
    import torch

    from shortlist.ranking.model import DCNEnsemble
    from shortlist.ranking.ranker import Ranker

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
    reqs = make_requests(
        validation,
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
    _standardise(space, train_rows)
    _standardise(space, serve_rows)
    ks = sorted({10, rp.eval_k})
    user_ids = [r.user_id for r in reqs]
    serve_users = [r.user_id for r in first]

    run_ctx = _mlflow(params, mlflow_run)
    members, reports = [], []
    with run_ctx as run:
        if run is not None:
            import mlflow

            mlflow.log_params({f"ranker.{k}": v for k, v in rp.model_dump().items()})
            mlflow.log_params(
                {
                    "seed": seed,
                    "requests": len(reqs),
                    "users": len(first),
                    "tower_fingerprint": getattr(retriever, "fingerprint", ""),
                }
            )
        for k in range(rp.ensemble):
            # Member k: its own seed, its own early-stopping users (bagging) and its own
            # decision users, disjoint from both: the stop users chose the epoch, so a
            # gain measured on them is biased upward.
            fit_mask, _, _ = _folds(user_ids, seed + k, rp)
            _, hold, judge = _folds(serve_users, seed + k, rp)
            fit_ex, stop_ex = _select(train_rows, fit_mask), _select(serve_rows, hold)
            decide_ex = _select(serve_rows, judge)
            prefix = "" if k == 0 else f"member_{k}."

            def on_epoch(row: dict[str, Any], prefix: str = prefix) -> None:
                if run is not None:
                    import mlflow

                    mlflow.log_metrics(
                        {prefix + metric_key(key): v for key, v in row.items() if key != "epoch"},
                        step=row["epoch"],
                    )

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
                    )[f"ndcg@{rp.eval_k}"],
                    "decide_per_request_retrieval": per_request_metrics(
                        decide_ex, decide_ex.retrieval, [rp.eval_k]
                    )[f"ndcg@{rp.eval_k}"],
                    "decide_requests": len(decide_ex),
                    "best_epoch": int(np.argmax([h[f"ndcg@{rp.eval_k}"] for h in history]) + 1),
                    "fit_requests": len(fit_ex),
                    "fit_rows": int(len(fit_ex.labels)),
                    "fit_positives": int(fit_ex.labels.sum()),
                    "stop_requests": len(stop_ex),
                    "history": history,
                }
            )
        # Each member is scored on its own stop users; the means compare like with like.
        final = _mean_metrics([r["stop_ranker"] for r in reports])
        baseline = _mean_metrics([r["stop_retrieval_only"] for r in reports])
        key = f"ndcg@{rp.eval_k}"
        decision = decide(
            np.concatenate([r.pop("decide_per_request_ranker") for r in reports]),
            np.concatenate([r.pop("decide_per_request_retrieval") for r in reports]),
            metric=key,
            min_z=rp.ship_min_z,
        )
        if run is not None:
            import mlflow

            mlflow.log_metrics({metric_key(f"stop_ranker_{k}"): v for k, v in final.items()})
            mlflow.log_metrics({metric_key(f"stop_retrieval_{k}"): v for k, v in baseline.items()})
            mlflow.set_tags(
                {
                    "ranker.shipped": str(decision.shipped).lower(),
                    "ranker.decision": decision.reason,
                }
            )
            mlflow.log_metrics(
                {"ranker_gain": decision.gain, "ranker_gain_stderr": decision.stderr}
            )
            fig = _curves(reports[0]["history"], reports[0]["stop_retrieval_only"], rp.eval_k)
            mlflow.log_figure(fig, "ranker_curves.png")
            import matplotlib.pyplot as plt

            plt.close(fig)
    model = members[0] if len(members) == 1 else DCNEnsemble(members)

    popularity = popularity_block(log, np.arange(space.n_items), log.end, space.windows_days)
    if space.neighbours is not None:
        # Serving snapshot as of the end of the log, as for popularity.
        space.neighbours = _neighbours(seen_all, space, rp)
    trend = trend_popularity(seen_all, space.item_ids, half_life)
    first = reports[0]
    summary = {
        "shipped": decision.shipped,
        "decision": decision.to_dict(),
        "stop_ranker": final,
        "stop_retrieval_only": baseline,
        "history": first["history"],
        "best_epoch": first["best_epoch"],
        "fit_requests": first["fit_requests"],
        "fit_rows": first["fit_rows"],
        "fit_positives": first["fit_positives"],
        "stop_requests": first["stop_requests"],
        "ensemble": [{k: v for k, v in r.items() if k != "history"} for r in reports],
        "feature_groups": groups,
        "n_dense": space.n_dense,
        "seconds": time.perf_counter() - t0,
        "seed": seed,
    }
    meta = {
        "sources": {
            "item_to_item": rp.item_to_item_candidates,
            "popular": rp.popular_candidates,
        },
        "snapshot_end": log.end,
        "tower_fingerprint": getattr(retriever, "fingerprint", ""),
        "training": {k: v for k, v in summary.items() if k != "history"},
    }
    return Ranker(space, model, popularity, meta, trend=trend), summary


class _NoRun:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _mlflow(params: Params, enabled: bool):
    if not enabled:
        return _NoRun()
    from shortlist.tracking import start_run

    return start_run(params, run_name="ranker", stage="train_ranker")


def _curves(history: list[dict[str, Any]], baseline: dict[str, float], k: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    ep = [h["epoch"] for h in history]
    a.plot(ep, [h["loss"] for h in history], marker="o")
    a.set_title("weighted logistic loss (fit)")
    a.set_xlabel("epoch")
    b.plot(ep, [h[f"ndcg@{k}"] for h in history], marker="o", label="ranker")
    b.axhline(baseline[f"ndcg@{k}"], color="grey", ls="--", label="retrieval order")
    b.set_title(f"held-out NDCG@{k}")
    b.set_xlabel("epoch")
    b.legend()
    fig.tight_layout()
    return fig
