"""Training the two towers: the fit loop, early stopping and the refit on validation.

`train_two_tower` trains from scratch with a fixed seed, evaluates every epoch on the
validation part (`shortlist.models.validation`), keeps the epoch with the best
validation Recall@K, and by default retrains for that many epochs on train + validation.
The examples, the objective and the reporting live in their own modules beside this one.
"""

from __future__ import annotations

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
from shortlist.models.early_stopping import EarlyStopping
from shortlist.models.examples import (
    build_examples,
    item_feature_tensors,
    resolve_history_mode,
    vocab_catalog,
)
from shortlist.models.features import FeatureState
from shortlist.models.logq import StreamingFrequencyEstimator
from shortlist.models.objective import WeightAverage, make_optimizer, train_step
from shortlist.models.reporting import log_to_mlflow, write_history
from shortlist.models.two_tower import TwoTowerRetriever, build_net
from shortlist.models.validation import VALIDATION_KS, TowerValidationSet, evaluate_retriever

#: Subdirectory of a model dir holding the early-stopping model when the saved one was
#: refitted on validation (the ranker trains against it, see pipelines/train_ranker.py).
EARLY_STOPPED = "early_stopped"


def model_config(tp: TowerParams) -> dict[str, Any]:
    """The architecture part of the params, stored with the model."""
    return {
        "embedding_dim": tp.embedding_dim,
        "hidden_dim": tp.hidden_dim,
        "id_dim": tp.id_dim,
        "history_len": tp.history_len,
        "temperature": tp.temperature,
        "title_hash_buckets": tp.title_hash_buckets,
        "user_buckets": tp.user_buckets,
    }


@dataclass
class FittedTowers:
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


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def fit_towers(
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
) -> tuple[FittedTowers, TowerValidationSet | None, pd.DataFrame]:
    """Train from scratch (seeded) for at most `epochs`; with `validation`, evaluate every
    epoch and stop early, keeping the best epoch's weights; without, keep the last.
    `on_epoch` sees each epoch's row (loss, validation metrics) as it is recorded.
    Returns the run, its validation set and the catalog in vocabulary order."""
    from tqdm.auto import tqdm

    _seed_everything(seed)
    rng = np.random.default_rng(seed)
    t_start = time.perf_counter()

    state = FeatureState.fit(
        train, items, users, title_hash_buckets=tp.title_hash_buckets, user_buckets=tp.user_buckets
    )
    config = model_config(tp)
    net = build_net(state, config, items)
    examples = build_examples(train, state, users, tp.history_len, tp.history_mode)
    item_feats = item_feature_tensors(state, items)
    catalog = vocab_catalog(state, items)
    vset = None
    if validation is not None:
        vset = TowerValidationSet(state, train, validation, tp.history_len)
    n_items = state.n_item_ids - 1
    counts = np.bincount(examples.item_idx, minlength=state.n_item_ids)[1:].astype(np.float64)
    log_pop = np.log((counts + 1.0) / (counts.sum() + n_items)).astype(np.float32)
    t_prep = time.perf_counter() - t_start

    estimator = StreamingFrequencyEstimator(tp.logq.hash_buckets, tp.logq.alpha)
    if tp.logq.enabled:  # warm-up pass over one shuffled epoch of positives (no gradients)
        estimator.update(examples.item_idx[rng.permutation(len(examples))], 0)

    optimizer = make_optimizer(net, tp)
    ema = WeightAverage(net, tp.ema_decay) if tp.ema_decay else None
    eval_net = ema.net if ema is not None else net  # the weights evaluated and kept
    retriever = TwoTowerRetriever(eval_net, state, config, items, fingerprint="-")

    history: list[dict[str, Any]] = []
    stopping = EarlyStopping(tp.early_stopping_patience)
    last_epoch = 0
    metric_key = f"recall@{tp.eval_k}"
    ks = tuple(sorted({tp.eval_k, *VALIDATION_KS}))
    n = len(examples)
    bs = tp.batch_size
    step = estimator.steps_seen
    bar = tqdm(total=epochs * max(1, math.ceil(n / bs)), desc=desc, disable=not progress)
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
                train_step(net, optimizer, examples, rows, item_feats, estimator, step, tp, rng)
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
        last_epoch = epoch
        if on_epoch is not None:
            on_epoch(row)
        if vset is not None and stopping.update(epoch, metrics[metric_key], eval_net):
            break
    bar.close()
    if stopping.best_state is not None:
        net.load_state_dict(stopping.best_state)
    elif ema is not None:
        net.load_state_dict(ema.net.state_dict())
    net.eval()
    fitted = FittedTowers(
        net=net,
        state=state,
        config=config,
        history=history,
        best_epoch=stopping.best_epoch if vset is not None else last_epoch,
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
    tuner prunes from it). The report holds the early-stopping run's per-epoch history
    (loss, validation metrics, seconds), best epoch and validation metrics (with and
    without the inference popularity term; measured before any refit, as the refit model
    has seen validation), the refit's own history, timings and, when logged, the MLflow
    run id. With out_dir the model is saved there (and logged as run artifacts).
    """
    tp = params.towers
    if tp.history_mode == "auto":
        tp = tp.model_copy(update={"history_mode": resolve_history_mode("auto", real_time)})
    seed = params.project.seed if seed is None else seed
    torch.set_num_threads(tp.threads)
    t_start = time.perf_counter()

    es, vset, catalog = fit_towers(
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
        final, _, _ = fit_towers(
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

    def model_of(fitted: FittedTowers, refit_on_validation: bool) -> TwoTowerRetriever:
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
        report["mlflow_run_id"] = log_to_mlflow(params, report, snapshot_id, out_dir)
        model.meta["mlflow_run_id"] = report["mlflow_run_id"]
        if out_dir is not None:
            model.save(out_dir)
    return model, report
