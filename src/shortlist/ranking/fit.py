"""Fitting one ranking network: the weighted logistic loss over shuffled rows, Adam, and
early stopping on the stop requests' NDCG@eval_k, ranked as serving ranks them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from shortlist.config import RankerParams
from shortlist.models.early_stopping import EarlyStopping
from shortlist.ranking.features import FeatureSpace
from shortlist.ranking.featurize import RankerRows
from shortlist.ranking.model import DCNRanker, weighted_logistic_loss
from shortlist.ranking.request_metrics import request_metrics


def fit_network(
    space: FeatureSpace,
    fit: RankerRows,
    stop: RankerRows,
    rp: RankerParams,
    *,
    seed: int,
    progress: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[DCNRanker, list[dict[str, Any]]]:
    """Train the DCN with the weighted logistic loss; early stopping on stop-set NDCG@k.

    Returns (the best epoch's model in eval mode, one dict per epoch: loss, stop-set
    metrics, seconds).
    """
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
    opt = Adam(model.parameters(), lr=rp.learning_rate, weight_decay=rp.weight_decay)
    tensors = [
        torch.from_numpy(a)
        for a in (fit.dense, fit.user_idx, fit.item_idx, fit.labels, fit.weights)
    ]
    gen = torch.Generator().manual_seed(seed)
    key = f"ndcg@{rp.eval_k}"
    stopper = EarlyStopping(rp.early_stopping_patience)
    history: list[dict[str, Any]] = []
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
        if stopper.update(epoch, metrics[key], model):
            break
    if stopper.best_state is not None:
        model.load_state_dict(stopper.best_state)
    return model.eval(), history


def predict(model: nn.Module, ex: RankerRows, batch: int = 65_536) -> np.ndarray:
    """The model's score of every row of `ex` (float32, in row order)."""
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


class Adam:
    """Adam (Kingma & Ba 2015) with L2 weight decay: the steps of torch.optim.Adam
    (tests/ranking/test_fit.py compares them).

    Written out because constructing any torch.optim optimizer imports torch._dynamo,
    several seconds per process even with cached bytecode (tens without), more than
    fitting the ranker takes on small data; for a network this small the loop is as fast.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.betas, self.eps, self.wd = lr, betas, eps, weight_decay
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
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
