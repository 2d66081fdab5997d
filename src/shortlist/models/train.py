"""Training the two towers: in-batch sampled softmax with the logQ correction.

Each training example is one interaction (user, item, t). Its query sees only what was
known before t: the user's items with timestamp < t (the last history_len of them), the
user's features and the context (hour, weekday) of t. The other positives of the batch
(plus optional uniformly sampled items) are the negatives; each candidate's logit is
corrected by subtracting log Q, its expected count among the candidates, from the streaming
frequency estimate (Yi et al. 2019). Candidates that are the positive's own item are masked
(accidental hits). Early stopping keeps the epoch with the best validation Recall@K,
computed by full ranking over the training catalog with each user's train items excluded.
"""

from __future__ import annotations

import copy
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from shortlist.config import Params, TowerParams
from shortlist.data import schema
from shortlist.models.features import FeatureState, encode_context
from shortlist.models.logq import StreamingFrequencyEstimator
from shortlist.models.two_tower import TwoTowerRetriever, build_net, histories_from
from shortlist.tracking import metric_key

VALIDATION_KS = (20, 200)
#: Subdirectory of a model dir holding the early-stopping model when the saved one was
#: refitted on validation (the ranker trains against it, see pipelines/train_ranker.py).
EARLY_STOPPED = "early_stopped"


@dataclass
class Examples:
    """Training examples as aligned arrays (one row per interaction)."""

    user_idx: np.ndarray  # (n,)
    user_feats: np.ndarray  # (n, f)
    history: np.ndarray  # (n, L + gap) vocabulary indices, most recent last, 0 = padding
    context: np.ndarray  # (n, 2)
    item_idx: np.ndarray  # (n,)

    def __len__(self) -> int:
        return len(self.item_idx)


def model_config(tp: TowerParams) -> dict[str, Any]:
    """The architecture part of the params, stored with the model."""
    return {
        "embedding_dim": tp.embedding_dim,
        "hidden_dim": tp.hidden_dim,
        "id_dim": tp.id_dim,
        "history_len": tp.history_len,
        "recent_items": tp.recent_items,
        "temperature": tp.temperature,
        "title_hash_buckets": tp.title_hash_buckets,
        "user_buckets": tp.user_buckets,
    }


def _user_segments(user_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row index, row starts a new user, first row of the row's user) for rows sorted by
    user: the shared bookkeeping of the vectorised history builders."""
    idx = np.arange(len(user_codes))
    new_user = np.r_[True, user_codes[1:] != user_codes[:-1]]
    return idx, new_user, np.maximum.accumulate(np.where(new_user, idx, 0))


def history_before(
    user_codes: np.ndarray, timestamps: np.ndarray, item_idx: np.ndarray, n: int
) -> np.ndarray:
    """(rows, n) histories for rows sorted by (user, timestamp, item).

    Row r gets the last n items of the same user with timestamp strictly before row r's
    (ties at the same second are not history: none of them was known before the others).
    Built with one sliding-window gather, no Python loop over users.
    """
    rows = len(item_idx)
    if rows == 0:
        return np.zeros((0, n), dtype=np.int64)
    idx, new_user, user_start = _user_segments(user_codes)
    new_time = new_user | np.r_[True, timestamps[1:] != timestamps[:-1]]
    group_start = np.maximum.accumulate(np.where(new_time, idx, 0))  # first row of the tie
    window = group_start[:, None] - n + np.arange(n)[None, :]
    valid = window >= user_start[:, None]
    hist = np.where(valid, item_idx[np.clip(window, 0, None)], 0)
    return hist.astype(np.int64)


def history_leave_one_out(user_codes: np.ndarray, item_idx: np.ndarray, n: int) -> np.ndarray:
    """(rows, n) histories for rows sorted by (user, timestamp, item): row r gets the last n
    items of its user's rows other than r itself, most recent last, left-padded with 0.

    This matches the evaluation task (all of a user's train items -> their later items)
    instead of next-item prediction, where early examples see nearly empty histories.
    The target is never in its own history. Vectorised: the window is the user's last
    n + 1 rows with one column dropped (r's own if r is in it, else the oldest).
    """
    rows = len(item_idx)
    if rows == 0:
        return np.zeros((0, n), dtype=np.int64)
    idx, _, user_start = _user_segments(user_codes)
    last_user = np.r_[user_codes[1:] != user_codes[:-1], True]
    user_end = np.minimum.accumulate(np.where(last_user, idx + 1, rows)[::-1])[::-1]
    first = user_end - n - 1  # first row of the (n + 1)-row window
    drop = np.maximum(idx - first, 0)  # the window column to leave out
    cols = np.arange(n)[None, :]
    window = first[:, None] + cols + (cols >= drop[:, None])
    valid = window >= user_start[:, None]
    hist = np.where(valid, item_idx[np.clip(window, 0, rows - 1)], 0)
    return hist.astype(np.int64)


def resolve_history_mode(mode: str, real_time: bool) -> str:
    """`auto` -> causal where time is real, leave_one_out (a set) where it is not."""
    if mode != "auto":
        return mode
    return "causal" if real_time else "leave_one_out"


def build_examples(
    train: pd.DataFrame,
    state: FeatureState,
    users: pd.DataFrame | None,
    history_len: int,
    history_mode: str = "causal",
    history_gap: int = 0,
) -> Examples:
    """One example per train interaction. history_mode "causal": the history holds only
    items strictly before the target's time; "leave_one_out": the user's last history_len
    train items other than the target (see history_leave_one_out).

    With history_gap > 0 (causal only) each history is history_len + history_gap wide, so
    that a batch can end it up to history_gap items before the target (select_histories).
    """
    if history_gap and history_mode != "causal":
        raise ValueError("history_gap applies to the causal history_mode only")
    u = train[schema.USER_ID].astype(str).to_numpy()
    i = train[schema.ITEM_ID].astype(str).to_numpy()
    t = train[schema.TIMESTAMP].to_numpy(dtype=np.int64)
    order = np.lexsort((i, t, u))
    u, i, t = u[order], i[order], t[order]
    item_idx = state.item_index(i)
    user_codes = pd.factorize(u)[0]
    if history_mode == "leave_one_out":
        hist = history_leave_one_out(user_codes, item_idx, history_len)
    elif history_mode == "causal":
        hist = history_before(user_codes, t, item_idx, history_len + history_gap)
    else:
        raise ValueError(f"unknown history_mode {history_mode!r}")
    uniq, inverse = np.unique(u, return_inverse=True)
    enc = state.encode_users(uniq, users)
    return Examples(
        user_idx=enc["user_idx"][inverse],
        user_feats=enc["user_feats"][inverse],
        history=hist,
        context=encode_context(t, len(t)),
        item_idx=item_idx,
    )


# --- evaluation during training ------------------------------------------------------


class ValidationSet:
    """Full-ranking validation over the training catalog, train items excluded."""

    def __init__(
        self,
        retriever_state: FeatureState,
        train: pd.DataFrame,
        validation: pd.DataFrame,
        history_len: int,
    ) -> None:
        state = retriever_state
        val = validation[validation[schema.ITEM_ID].astype(str).isin(state._item_index)]
        self.user_ids = sorted(set(val[schema.USER_ID].astype(str)))
        self.histories = histories_from(train, self.user_ids, history_len)
        last = train.groupby(train[schema.USER_ID].astype(str))[schema.TIMESTAMP].max()
        self.timestamps = last.reindex(self.user_ids).to_numpy(dtype=float)
        row = {u: k for k, u in enumerate(self.user_ids)}
        tr = train[train[schema.USER_ID].astype(str).isin(row)]
        self.seen_rows = tr[schema.USER_ID].astype(str).map(row).to_numpy()
        self.seen_cols = state.item_index(tr[schema.ITEM_ID].astype(str)) - 1
        self.relevant: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(self.user_ids)
        vr = val[schema.USER_ID].astype(str).map(row).to_numpy()
        vc = state.item_index(val[schema.ITEM_ID].astype(str)) - 1
        for r, group in pd.Series(vc).groupby(vr):
            self.relevant[int(r)] = np.unique(group.to_numpy())

    def __len__(self) -> int:
        return len(self.user_ids)


def ranking_metrics(
    scores: np.ndarray,
    relevant: list[np.ndarray],
    ks: tuple[int, ...] = VALIDATION_KS,
) -> dict[str, float]:
    """Mean Recall@K (hits / relevant) and NDCG@K over users with relevant items, with the
    definitions of `shortlist.eval.metrics`.

    `scores` must already hold -inf for excluded (train) items. Ties at the cut fall where
    torch.topk puts them (the harness breaks them by item; early stopping does not care).
    """
    from shortlist.eval.metrics import ranking_metrics as per_user_metrics

    names = [f"{m}@{k}" for m in ("recall", "ndcg") for k in ks]
    rows = [r for r, rel in enumerate(relevant) if len(rel)]
    if not rows:
        return dict.fromkeys(names, 0.0)
    kmax = min(max(ks), scores.shape[1])
    top = torch.topk(torch.from_numpy(scores[rows]), kmax, dim=1).indices.numpy()
    hits = np.stack([np.isin(top[j], relevant[r]) for j, r in enumerate(rows)])
    per_user = per_user_metrics(hits, np.array([len(relevant[r]) for r in rows]), ks)
    return {n: float(per_user[n].mean()) for n in names}


def evaluate_retriever(
    retriever: TwoTowerRetriever,
    vset: ValidationSet,
    catalog: pd.DataFrame,
    users: pd.DataFrame | None,
    ks: tuple[int, ...] = VALIDATION_KS,
    popularity_weight: float = 0.0,
    log_popularity: np.ndarray | None = None,
) -> dict[str, float]:
    """Validation metrics; catalog rows are in vocabulary order (index k -> row k - 1)."""
    if not len(vset):
        return {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    items = retriever.embed_items(catalog)
    queries = retriever.embed_users(vset.user_ids, vset.histories, users, vset.timestamps)
    scores = queries @ items.T
    if popularity_weight and log_popularity is not None:
        scores = scores + popularity_weight * retriever.temperature * log_popularity[None, :]
    scores[vset.seen_rows, vset.seen_cols] = -np.inf
    return ranking_metrics(scores, vset.relevant, ks)


# --- the training loop ----------------------------------------------------------------


def _item_feature_tensors(state: FeatureState, items: pd.DataFrame) -> dict[str, torch.Tensor]:
    """Content features per vocabulary index (row 0: the OOV bucket, zero content)."""
    catalog = vocab_catalog(state, items)
    enc = state.encode_items(catalog)
    out = {}
    for key in ("genres", "title", "numerics"):
        arr = enc[key]
        pad = np.zeros((1, *arr.shape[1:]), dtype=arr.dtype)
        out[key] = torch.from_numpy(np.concatenate([pad, arr]))
    return out


def vocab_catalog(state: FeatureState, items: pd.DataFrame) -> pd.DataFrame:
    """The item table restricted to and ordered like the training vocabulary."""
    table = items.assign(**{schema.ITEM_ID: items[schema.ITEM_ID].astype(str)})
    table = table.drop_duplicates(schema.ITEM_ID).set_index(schema.ITEM_ID)
    table = table.reindex(state.item_vocab)
    table.index.name = schema.ITEM_ID
    return table.reset_index()


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def _batch_loss(
    net: nn.Module,
    batch: dict[str, torch.Tensor],
    item_feats: dict[str, torch.Tensor],
    log_q: torch.Tensor | None,
    temperature: float,
    content_weight: float = 0.0,
) -> torch.Tensor:
    """Sampled softmax over the batch's candidates; with content_weight > 0, plus that
    times the same softmax with every candidate embedded from content only (id = the OOV
    bucket), which trains the item tower for items it has never seen (cold items)."""
    pos = batch["item_idx"]
    cand = batch["candidates"]  # positives of the batch, then uniform negatives
    cand_in = batch["candidates_in"]  # with id dropout applied
    q = net.query_forward(
        batch["user_idx"], batch["user_feats"], batch["history"], batch["context"]
    )
    content = (item_feats["genres"][cand], item_feats["title"][cand], item_feats["numerics"][cand])
    b = len(pos)
    hits = pos[:, None] == cand[None, :]
    hits[:, :b] &= ~torch.eye(b, dtype=torch.bool)
    target = torch.arange(b)

    def softmax_loss(v: torch.Tensor) -> torch.Tensor:
        logits = q @ v.T / temperature
        if log_q is not None:
            logits = logits - log_q[None, :]
        return nn.functional.cross_entropy(logits.masked_fill(hits, float("-inf")), target)

    loss = softmax_loss(net.item_forward(cand_in, *content))
    if content_weight:
        loss = loss + content_weight * softmax_loss(
            net.item_forward(torch.zeros_like(cand), *content)
        )
    return loss


class WeightAverage:
    """An exponential moving average of a network's parameters (Polyak averaging).

    After each optimisation step the copy moves towards the trained weights by
    1 - decay (decay warmed up as (1 + k) / (10 + k) over the first steps, so the random
    initialisation fades fast). On a small data set the averaged weights are less noisy
    from step to step than the last ones, so the early-stopping epoch is picked on less
    noise and the kept model generalises better.
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        self.net = copy.deepcopy(net).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, cur in zip(self.net.parameters(), net.parameters(), strict=True):
            avg.lerp_(cur, 1.0 - d)


@dataclass
class _Fitted:
    """One training run: the towers (at their best epoch) and what was measured."""

    net: nn.Module
    state: FeatureState
    config: dict[str, Any]
    history: list[dict[str, Any]]
    best_epoch: int
    train_examples: int
    log_pop: np.ndarray
    counts: np.ndarray
    prepare_seconds: float
    seconds: float


def _fit(
    tp: TowerParams,
    train: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame | None,
    seed: int,
    epochs: int,
    validation: pd.DataFrame | None,
    progress: bool,
    desc: str,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[_Fitted, ValidationSet | None, pd.DataFrame]:
    """Train from scratch (seeded) for at most `epochs`; with `validation`, evaluate every
    epoch and stop early, keeping the best epoch's weights; without, keep the last.
    `on_epoch` sees each epoch's row (loss, validation metrics) as it is recorded."""
    from tqdm.auto import tqdm

    _seed_everything(seed)
    rng = np.random.default_rng(seed)
    t_start = time.perf_counter()

    state = FeatureState.fit(
        train, items, users, title_hash_buckets=tp.title_hash_buckets, user_buckets=tp.user_buckets
    )
    config = model_config(tp)
    net = build_net(state, config, items)
    examples = build_examples(train, state, users, tp.history_len, tp.history_mode, tp.history_gap)
    item_feats = _item_feature_tensors(state, items)
    catalog = vocab_catalog(state, items)
    vset = None if validation is None else ValidationSet(state, train, validation, tp.history_len)
    n_items = state.n_item_ids - 1
    counts = np.bincount(examples.item_idx, minlength=state.n_item_ids)[1:].astype(np.float64)
    log_pop = np.log((counts + 1.0) / (counts.sum() + n_items)).astype(np.float32)
    t_prep = time.perf_counter() - t_start

    estimator = StreamingFrequencyEstimator(tp.logq.hash_buckets, tp.logq.alpha)
    if tp.logq.enabled:  # warm-up pass over one shuffled epoch of positives (no gradients)
        estimator.update(examples.item_idx[rng.permutation(len(examples))], 0)

    optimizer = make_optimizer(net, tp)
    loss_fn = torch.compile(_batch_loss, dynamic=True) if tp.compile else _batch_loss
    ema = WeightAverage(net, tp.ema_decay) if tp.ema_decay else None
    eval_net = ema.net if ema is not None else net  # the weights evaluated and kept
    retriever = TwoTowerRetriever(eval_net, state, config, items, fingerprint="-")

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": 0, "metric": -1.0, "weights": None}
    metric_key = f"recall@{tp.eval_k}"
    ks = tuple(sorted({tp.eval_k, *VALIDATION_KS}))
    n = len(examples)
    bs = tp.batch_size
    steps_per_epoch = max(1, math.ceil(n / bs))
    step = estimator.steps_seen
    bar = tqdm(total=epochs * steps_per_epoch, desc=desc, disable=not progress)
    stale = 0
    for epoch in range(1, epochs + 1):
        t_epoch = time.perf_counter()
        net.train()
        perm = rng.permutation(n)
        losses = []
        for s in range(0, n, bs):
            rows = perm[s : s + bs]
            if len(rows) < 2:
                continue
            losses.append(
                train_step(
                    net, optimizer, loss_fn, examples, rows, item_feats, estimator, step, tp, rng
                )
            )
            step += len(rows)
            if ema is not None:
                ema.update(net)
            bar.update(1)
        train_seconds = time.perf_counter() - t_epoch
        net.eval()
        row: dict[str, Any] = {
            "epoch": epoch,
            "loss": float(np.mean(losses)) if losses else float("nan"),
        }
        if vset is not None:
            t_eval = time.perf_counter()
            metrics = evaluate_retriever(retriever, vset, catalog, users, ks)
            row.update({f"val_{k}": v for k, v in metrics.items()})
            row["eval_seconds"] = time.perf_counter() - t_eval
            bar.set_postfix(loss=f"{row['loss']:.3f}", **{metric_key: f"{metrics[metric_key]:.4f}"})
        row["train_seconds"] = train_seconds
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if vset is None:
            best["epoch"] = epoch
            continue
        if metrics[metric_key] > best["metric"]:
            best = {
                "epoch": epoch,
                "metric": metrics[metric_key],
                "weights": copy.deepcopy(eval_net.state_dict()),
            }
            stale = 0
        else:
            stale += 1
            if stale >= tp.early_stopping_patience:
                break
    bar.close()
    if best["weights"] is not None:
        net.load_state_dict(best["weights"])
    elif ema is not None:
        net.load_state_dict(ema.net.state_dict())
    net.eval()
    fitted = _Fitted(
        net=net,
        state=state,
        config=config,
        history=history,
        best_epoch=best["epoch"],
        train_examples=n,
        log_pop=log_pop,
        counts=counts,
        prepare_seconds=t_prep,
        seconds=time.perf_counter() - t_start,
    )
    return fitted, vset, catalog


def train_two_tower(
    params: Params,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame | None,
    *,
    seed: int | None = None,
    progress: bool = True,
    mlflow_run: bool = True,
    snapshot_id: str = "",
    out_dir: str | None = None,
    real_time: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[TwoTowerRetriever, dict[str, Any]]:
    """Train on `train`, stop early on `validation`; returns (model, report).

    With `towers.refit_on_validation` (and a non-empty validation part) the returned model
    is then retrained from scratch, same seed, on train + validation for the best epoch
    count, as the baselines refit after tuning; otherwise it is the best early-stopping
    model. `real_time` (False when the split says timestamps were synthesised) resolves
    `towers.history_mode: auto`; `on_epoch` sees each early-stopping epoch's row (a
    tuner prunes from it). The report holds the early-stopping run's per-epoch history (loss, validation
    metrics, seconds), best epoch and validation metrics (with and without the inference
    popularity term; measured before any refit, as the refit model has seen validation),
    the refit's own history, timings and, when logged, the MLflow run id. With out_dir
    the model is saved there (and logged as run artifacts).
    """
    tp = params.towers
    if tp.history_mode == "auto":
        tp = tp.model_copy(update={"history_mode": resolve_history_mode("auto", real_time)})
    seed = params.project.seed if seed is None else seed
    torch.set_num_threads(tp.threads)
    t_start = time.perf_counter()

    es, vset, catalog = _fit(
        tp, train, items, users, seed, tp.epochs, validation, progress, "train towers", on_epoch
    )
    assert vset is not None
    ks = tuple(sorted({tp.eval_k, *VALIDATION_KS}))
    history = es.history
    best_metrics = {k[4:]: v for k, v in history[es.best_epoch - 1].items() if k.startswith("val_")}
    w = tp.logq.inference_popularity_weight
    with_pop = best_metrics
    if w:
        es_retriever = TwoTowerRetriever(es.net, es.state, es.config, items, fingerprint="-")
        with_pop = evaluate_retriever(es_retriever, vset, catalog, users, ks, w, es.log_pop)

    final = es
    refit: dict[str, Any] | None = None
    if tp.refit_on_validation and len(validation) and es.best_epoch > 0:
        full = pd.concat([train, validation], ignore_index=True)
        final, _, _ = _fit(
            tp, full, items, users, seed, es.best_epoch, None, progress, "refit towers"
        )
        refit = {
            "epochs": es.best_epoch,
            "train_examples": final.train_examples,
            "history": final.history,
            "seconds": final.seconds,
        }
    t_train = time.perf_counter() - t_start

    all_epochs = history + (refit["history"] if refit else [])
    report: dict[str, Any] = {
        "history": history,
        "best_epoch": es.best_epoch,
        "epochs_run": len(history),
        "validation": best_metrics,
        "validation_with_popularity": with_pop,
        "validation_users": len(vset),
        "train_examples": es.train_examples,
        "catalog_items": es.state.n_item_ids - 1,
        "history_mode": tp.history_mode,
        "seed": seed,
        "refit": refit,
        "timings": {
            "prepare_seconds": es.prepare_seconds,
            "train_seconds": t_train,
            "early_stopping_seconds": es.seconds,
            "refit_seconds": refit["seconds"] if refit else 0.0,
            "seconds_per_epoch": float(np.mean([h["train_seconds"] for h in history])),
            "examples_per_second": es.train_examples
            * len(history)
            / max(1e-9, sum(h["train_seconds"] for h in history)),
            "epochs_total": len(all_epochs),
        },
    }

    def model_of(fitted: _Fitted, refit_on_validation: bool) -> TwoTowerRetriever:
        state, counts = fitted.state, fitted.counts
        n_items = state.n_item_ids - 1
        meta = {
            "snapshot_id": snapshot_id,
            "metrics": best_metrics,
            "metrics_with_popularity": with_pop,
            "best_epoch": es.best_epoch,
            "refit_on_validation": refit_on_validation,
            "seed": seed,
            "item_log_popularity": dict(
                zip(state.item_vocab, fitted.log_pop.tolist(), strict=True)
            ),
            "log_popularity_floor": float(np.log(1.0 / (counts.sum() + n_items))),
            "inference_popularity_weight": w,
        }
        return TwoTowerRetriever(fitted.net, state, fitted.config, items, meta=meta)

    model = model_of(final, refit is not None)
    if out_dir is not None:
        model.save(out_dir)
        write_history(report, out_dir)
        early = Path(out_dir) / EARLY_STOPPED
        if refit is not None:
            # The ranker trains on validation requests, which the refit model has seen:
            # it takes its candidates and scores from this model instead.
            model_of(es, False).save(str(early))
        elif early.exists():  # a stale one from an earlier run must not be trained against
            shutil.rmtree(early)
    if mlflow_run:
        report["mlflow_run_id"] = _log_to_mlflow(params, report, snapshot_id, out_dir)
        model.meta["mlflow_run_id"] = report["mlflow_run_id"]
        if out_dir is not None:
            model.save(out_dir)
    return model, report


def make_optimizer(net: nn.Module, tp: TowerParams) -> torch.optim.Optimizer:
    """The towers' optimizer (training and the throughput benchmark build it here).

    AdamW with the fused kernel, which updates every parameter tensor in one pass: ~10%
    less time a step on CPU here, where the dense update of the 1M-parameter title table
    is a large share of a step.
    """
    return torch.optim.AdamW(
        net.parameters(), lr=tp.learning_rate, weight_decay=tp.weight_decay, fused=True
    )


def train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Any,
    examples: Examples,
    rows: np.ndarray,
    item_feats: dict[str, torch.Tensor],
    estimator: StreamingFrequencyEstimator,
    step: int,
    tp: TowerParams,
    rng: np.random.Generator,
) -> float:
    """One optimisation step on examples[rows]; `step` is the stream position of rows[0]."""
    n_items = len(item_feats["genres"]) - 1
    batch = _make_batch(examples, rows, tp, rng, n_items)
    log_q = None
    if tp.logq.enabled:
        estimator.update(examples.item_idx[rows], step)
        p = estimator.probability(batch["candidates"].numpy())
        expected = len(rows) * p + tp.mixed_negatives / n_items
        log_q = torch.from_numpy(np.log(expected).astype(np.float32))
    loss = loss_fn(net, batch, item_feats, log_q, tp.temperature, tp.content_loss_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _make_batch(
    ex: Examples, rows: np.ndarray, tp: TowerParams, rng: np.random.Generator, n_items: int
) -> dict[str, torch.Tensor]:
    pos = ex.item_idx[rows]
    cand = pos
    if tp.mixed_negatives:
        cand = np.concatenate([pos, rng.integers(1, n_items + 1, size=tp.mixed_negatives)])
    cand_in = np.where(rng.random(len(cand)) < tp.id_dropout, 0, cand)
    user_idx = ex.user_idx[rows]
    drop_user = rng.random(len(rows)) < tp.id_dropout
    user_idx = np.where(drop_user, rng.integers(0, tp.user_buckets, size=len(rows)), user_idx)
    context = ex.context[rows]
    context = np.where(rng.random((len(rows), 1)) < tp.context_dropout, 0, context)
    history = select_histories(ex.history[rows], tp.history_len, tp.history_gap, rng)
    history = truncate_histories(history, tp.history_truncation, rng)
    return {
        "item_idx": torch.from_numpy(pos),
        "candidates": torch.from_numpy(cand),
        "candidates_in": torch.from_numpy(cand_in),
        "user_idx": torch.from_numpy(user_idx),
        "user_feats": torch.from_numpy(ex.user_feats[rows]),
        "history": torch.from_numpy(history),
        "context": torch.from_numpy(context),
    }


def select_histories(
    wide: np.ndarray, history_len: int, max_gap: int, rng: np.random.Generator
) -> np.ndarray:
    """The history_len-wide histories of a batch from (rows, history_len + max_gap) causal
    ones: per row, a gap uniform in 0..max_gap of the most recent items is skipped.

    The target is then one of the next max_gap + 1 items after the history's end, as in
    evaluation, where the whole next slice of a user's items is to be retrieved (not only
    the very next one). max_gap 0 returns the input unchanged.
    """
    if not max_gap:
        return wide
    gap = rng.integers(0, max_gap + 1, size=len(wide))
    cols = (max_gap - gap)[:, None] + np.arange(history_len)[None, :]
    return np.take_along_axis(wide, cols, axis=1)


def truncate_histories(
    history: np.ndarray, probability: float, rng: np.random.Generator
) -> np.ndarray:
    """With `probability` per row, keep only a uniformly random number (1..filled) of the
    most recent items of the (left-padded, most recent last) history; the rest become 0.

    An augmentation so that a model trained on full histories also serves users who
    have only a few items. probability 0 returns the input unchanged (no copy).
    """
    if not probability or not len(history):
        return history
    n = history.shape[1]
    filled = (history > 0).sum(1)
    keep = np.floor(rng.random(len(history)) * filled).astype(np.int64) + 1
    cut = (rng.random(len(history)) < probability) & (filled > 0)
    keep = np.where(cut, keep, n)
    return np.where(np.arange(n)[None, :] >= n - keep[:, None], history, 0)


# --- reporting ------------------------------------------------------------------------


def plot_history(report: dict[str, Any], path: str) -> None:
    """Loss and validation metric curves per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = report["history"]
    epochs = [h["epoch"] for h in hist]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["loss"] for h in hist], marker="o")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss (sampled softmax)")
    for key in sorted(k for k in hist[0] if k.startswith("val_")):
        ax2.plot(epochs, [h[key] for h in hist], marker="o", label=key[4:])
    ax2.axvline(report["best_epoch"], color="grey", linestyle="--", label="best epoch")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation (full ranking)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_history(report: dict[str, Any], out_dir: str) -> None:
    """history.json (the report) and history.png (the curves) beside the model."""
    import json
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.json").write_text(json.dumps(report, indent=2, default=str))
    plot_history(report, str(out / "history.png"))


def _log_to_mlflow(
    params: Params, report: dict[str, Any], snapshot_id: str, out_dir: str | None
) -> str:
    import tempfile

    from shortlist.tracking import start_run

    tags = {"shortlist.snapshot_id": snapshot_id} if snapshot_id else {}
    with start_run(params, run_name="train-towers", stage="train_towers", tags=tags) as run:
        import mlflow

        flat = _flatten(params.towers.model_dump(), "towers")
        mlflow.log_params({**flat, "seed": report["seed"]})
        for h in report["history"]:
            mlflow.log_metrics(
                {metric_key(k): v for k, v in h.items() if k != "epoch" and np.isfinite(v)},
                step=h["epoch"],
            )
        mlflow.log_metrics({metric_key(f"best_{k}"): v for k, v in report["validation"].items()})
        mlflow.log_metrics({"best_epoch": report["best_epoch"], **report["timings"]})
        if out_dir is not None:
            mlflow.log_artifacts(out_dir, artifact_path="model")
        else:
            with tempfile.TemporaryDirectory() as tmp:
                write_history(report, tmp)
                mlflow.log_artifacts(tmp, artifact_path="model")
        return run.info.run_id


def _flatten(d: dict[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out
