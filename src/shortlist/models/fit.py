"""Training the two towers: the fit loop, early stopping and the refit on validation.

`train_two_tower` trains from scratch with a fixed seed, evaluates every epoch on the
validation part (`shortlist.models.validation`), keeps the epoch with the best
validation Recall@K, and by default retrains for that many epochs on train + validation.
The examples, the objective and the reporting live in their own modules beside this one.

Under torchrun the same functions train data-parallel (`shortlist.models.distributed`):
every rank steps through the same global batches, each on its own shard of them, with
DDP averaging the gradients; rank 0 alone validates, decides and writes, and broadcasts
its decisions. A single process (no torchrun environment) runs exactly the loop it ran
before distributed training existed: the same random streams, the same numbers.

At a large catalog (`towers.sparse_embeddings`, auto from `towers.sparse_min_items` items)
the embedding tables train sparsely (`shortlist.models.objective`): `RowAdam` on the rows
a batch touches, the history pooled over its distinct items: a different optimiser from
dense Adam, so those runs' numbers differ from dense ones; below the threshold nothing
changes. Batches are assembled ahead of the steps by a background thread
(`towers.prefetch_batches`), which changes no number.
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
from shortlist.models.distributed import Ranks, global_batches, setup, shard
from shortlist.models.early_stopping import EarlyStopping
from shortlist.models.examples import (
    build_examples,
    item_feature_tensors,
    resolve_history_mode,
    vocab_catalog,
)
from shortlist.models.features import FeatureState
from shortlist.models.logq import StreamingFrequencyEstimator
from shortlist.models.objective import (
    WeightAverage,
    apply_step,
    make_optimizer,
    prefetch,
    prepare_batch,
    resolve_sparse,
    set_sparse,
)
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
    ranks: Ranks | None = None,
) -> tuple[FittedTowers, TowerValidationSet | None, pd.DataFrame]:
    """Train from scratch (seeded) for at most `epochs`; with `validation`, evaluate every
    epoch and stop early, keeping the best epoch's weights; without, keep the last.
    `on_epoch` sees each epoch's row (loss, validation metrics) as it is recorded.
    Returns the run, its validation set and the catalog in vocabulary order.

    With `ranks` of a distributed run: every rank draws the same example order (same
    seed) and trains on its shard of each global batch, with its own stream for the
    batches' negatives and dropout (seeded by seed and rank), so the ranks do not repeat
    each other's samples. Rank 0 alone validates and keeps the best weights; its stop
    decision and best epoch reach every rank. Elsewhere the validation set is None, the
    history holds losses only and the weights are the rank's last averaged ones.
    """
    from tqdm.auto import tqdm

    ranks = ranks or Ranks()
    _seed_everything(seed)
    rng = np.random.default_rng(seed)
    # One process draws the order and the batches from one stream, as it always has.
    batch_rng = rng if ranks.world == 1 else np.random.default_rng([seed, ranks.rank])
    device = ranks.device
    t_start = time.perf_counter()

    state = FeatureState.fit(
        train, items, users, title_hash_buckets=tp.title_hash_buckets, user_buckets=tp.user_buckets
    )
    config = model_config(tp)
    net = build_net(state, config, items)
    examples = build_examples(train, state, users, tp.history_len, tp.history_mode)
    item_feats = host_feats = item_feature_tensors(state, items)  # batches gather on the host
    if device.type != "cpu":
        net.to(device)
        item_feats = {k: v.to(device) for k, v in item_feats.items()}
    catalog = vocab_catalog(state, items)
    vset = None
    if validation is not None and ranks.is_main:
        cap = tp.validation_max_cells // max(state.n_item_ids - 1, 1)
        vset = TowerValidationSet(
            state, train, validation, tp.history_len, max_users=max(cap, 1), seed=seed
        )
    n_items = state.n_item_ids - 1
    counts = np.bincount(examples.item_idx, minlength=state.n_item_ids)[1:].astype(np.float64)
    log_pop = np.log((counts + 1.0) / (counts.sum() + n_items)).astype(np.float32)
    sparse = resolve_sparse(tp, n_items, ranks.distributed)
    set_sparse(net, sparse)
    t_prep = time.perf_counter() - t_start

    estimator = StreamingFrequencyEstimator(tp.logq.hash_buckets, tp.logq.alpha)
    if tp.logq.enabled:  # warm-up pass over one shuffled epoch of positives (no gradients)
        estimator.update(examples.item_idx[rng.permutation(len(examples))], 0)

    loss_module = ranks.wrap(net)  # DDP starts every replica from rank 0's weights
    loss_module = None if loss_module is net else loss_module
    optimizer = make_optimizer(net, tp)
    # The replicas take identical steps, so each rank's average is the same too.
    ema = WeightAverage(net, tp.ema_decay) if tp.ema_decay else None
    eval_net = ema.net if ema is not None else net  # the weights evaluated and kept
    # Validation embeds on the CPU: a GPU run evaluates a host copy of those weights.
    eval_host = eval_net if device.type == "cpu" else copy.deepcopy(eval_net).cpu()
    retriever = TwoTowerRetriever(eval_host, state, config, items, fingerprint="-")

    history: list[dict[str, Any]] = []
    stopping = EarlyStopping(tp.early_stopping_patience)
    last_epoch = 0
    metric_key = f"recall@{tp.eval_k}"
    ks = tuple(sorted({tp.eval_k, *VALIDATION_KS}))
    n = len(examples)
    bs = tp.batch_size
    step = estimator.steps_seen
    batches = global_batches(n, bs, ranks.world)
    bar = tqdm(
        total=epochs * max(1, math.ceil(n / bs)),
        desc=desc,
        disable=not (progress and ranks.is_main),
    )
    for epoch in range(1, epochs + 1):
        t_epoch = time.perf_counter()
        net.train()
        perm = rng.permutation(n)
        losses = []
        schedule = []  # (this rank's shard, the global batch, its stream position)
        for s, stop in batches:
            batch_rows = perm[s:stop]  # the global batch; this rank trains on its shard
            schedule.append((shard(batch_rows, ranks.rank, ranks.world), batch_rows, step))
            step += len(batch_rows)

        def assemble(item: tuple[np.ndarray, np.ndarray, int]) -> Any:
            rows, batch_rows, at = item
            batch, log_q = prepare_batch(
                examples,
                rows,
                host_feats,
                estimator,
                at,
                tp,
                batch_rng,
                batch_rows,
                table_rows=sparse,
            )
            if device.type == "cuda":  # page-locked, so the copy to the GPU is asynchronous
                batch = {k: v.pin_memory() for k, v in batch.items()}
            return batch, log_q

        # One thread assembles the epoch's batches in order, ahead of the steps, drawing
        # from batch_rng exactly as the plain loop would; it ends with the epoch, before
        # the next permutation is drawn from the same stream.
        for prepared in prefetch(schedule, assemble, tp.prefetch_batches):
            losses.append(
                apply_step(
                    net, optimizer, prepared, item_feats, tp, loss_module=loss_module, ema=ema
                )
            )
            bar.update(1)
        if ema is not None:
            ema.flush(net)  # the sparse tables' average, up to date before it is read
        train_seconds = time.perf_counter() - t_epoch
        net.eval()
        if ranks.distributed:  # the mean over every rank's steps
            loss = ranks.mean(float(np.sum(losses)), len(losses))
        else:
            loss = float(np.mean(losses)) if losses else float("nan")
        row: dict[str, Any] = {"epoch": epoch, "loss": loss}
        if vset is not None:
            if eval_host is not eval_net:
                eval_host.load_state_dict(eval_net.state_dict())
            t_eval = time.perf_counter()
            metrics = evaluate_retriever(retriever, vset, catalog, users, ks)
            row.update({f"val_{k}": v for k, v in metrics.items()})
            row["eval_seconds"] = time.perf_counter() - t_eval
            bar.set_postfix(loss=f"{row['loss']:.3f}", **{metric_key: f"{metrics[metric_key]:.4f}"})
        row["train_seconds"] = train_seconds
        history.append(row)
        last_epoch = epoch
        if on_epoch is not None and ranks.is_main:
            on_epoch(row)
        if validation is not None:
            stop = vset is not None and stopping.update(epoch, metrics[metric_key], eval_net)
            if ranks.broadcast(stop):  # rank 0 decides; every rank stops with it
                break
    bar.close()
    if stopping.best_state is not None:
        net.load_state_dict(stopping.best_state)
    elif ema is not None:
        net.load_state_dict(ema.net.state_dict())
    net.eval()
    if device.type != "cpu":
        net.cpu()  # the model is saved and served from the CPU
    best_epoch = stopping.best_epoch if validation is not None else last_epoch
    fitted = FittedTowers(
        net=net,
        state=state,
        config=config,
        history=history,
        best_epoch=ranks.broadcast(best_epoch),
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

    Run under torchrun (`shortlist.models.distributed`), every rank calls this with the
    same arguments and trains its shard; rank 0 alone validates, writes the model and
    logs to MLflow, and every rank returns rank 0's report. The model returned on other
    ranks is their replica, not necessarily the saved one.
    """
    tp = params.towers
    if tp.history_mode == "auto":
        tp = tp.model_copy(update={"history_mode": resolve_history_mode("auto", real_time)})
    seed = params.project.seed if seed is None else seed
    torch.set_num_threads(tp.threads)
    ranks = setup(tp.backend)
    try:
        return _train(
            params,
            tp,
            train,
            validation,
            items,
            users,
            seed,
            ranks,
            progress=progress,
            mlflow_run=mlflow_run,
            snapshot_id=snapshot_id,
            out_dir=out_dir,
            on_epoch=on_epoch,
        )
    finally:
        ranks.close()


def _train(
    params: Params,
    tp: TowerParams,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame | None,
    seed: int,
    ranks: Ranks,
    *,
    progress: bool,
    mlflow_run: bool,
    snapshot_id: str,
    out_dir: str | None,
    on_epoch: Callable[[dict[str, Any]], None] | None,
) -> tuple[TwoTowerRetriever, dict[str, Any]]:
    """train_two_tower's body, on this process's rank (see its docstring)."""
    t_start = time.perf_counter()
    es, vset, catalog = fit_towers(
        tp,
        train,
        items,
        users,
        seed,
        tp.epochs,
        validation,
        progress,
        "train towers",
        on_epoch,
        ranks,
    )
    assert vset is not None or not ranks.is_main
    ks = tuple(sorted({tp.eval_k, *VALIDATION_KS}))
    history = es.history
    best_metrics: dict[str, float] = {}
    w = tp.logq.inference_popularity_weight
    with_pop = best_metrics
    if vset is not None:
        best_row = history[es.best_epoch - 1]
        best_metrics = {k[4:]: v for k, v in best_row.items() if k.startswith("val_")}
        with_pop = best_metrics
        if w:
            es_retriever = TwoTowerRetriever(es.net, es.state, es.config, items, fingerprint="-")
            with_pop = evaluate_retriever(es_retriever, vset, catalog, users, ks, w, es.log_pop)

    final = es
    refit: dict[str, Any] | None = None
    # es.best_epoch is rank 0's on every rank, so all of them refit or none does.
    if tp.refit_on_validation and len(validation) and es.best_epoch > 0:
        full = pd.concat([train, validation], ignore_index=True)
        final, _, _ = fit_towers(
            tp,
            full,
            items,
            users,
            seed,
            es.best_epoch,
            None,
            progress,
            "refit towers",
            ranks=ranks,
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
        "validation_users": len(vset) if vset is not None else 0,
        "validation_users_total": vset.users_total if vset is not None else 0,
        "train_examples": es.train_examples,
        "catalog_items": es.state.n_item_ids - 1,
        "history_mode": tp.history_mode,
        "seed": seed,
        "processes": ranks.world,
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
    if not ranks.is_main:  # rank 0 writes and logs; the others take its report
        report = ranks.broadcast(None)
        model.meta.update(metrics=report["validation"])
        if "mlflow_run_id" in report:
            model.meta["mlflow_run_id"] = report["mlflow_run_id"]
        return model, report
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
    if ranks.distributed:
        ranks.broadcast(report)
    return model, report
