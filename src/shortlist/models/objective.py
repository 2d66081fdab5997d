"""What the towers optimise and how: the corrected in-batch softmax, the optimiser, one
step, and the averaged weights that are evaluated and kept.

The loss is a sampled softmax over the batch's candidates (the other positives of the
batch plus uniformly sampled items). Each candidate's logit is corrected by subtracting
log Q, its expected count among the candidates, from the streaming frequency estimate
(Yi et al. 2019), so that popular items are not pushed down merely for appearing often
as negatives. Candidates that are the positive's own item are masked (accidental hits).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from shortlist.config import TowerParams
from shortlist.models.examples import TowerExamples, make_batch
from shortlist.models.logq import StreamingFrequencyEstimator


def batch_loss(
    net: nn.Module,
    batch: dict[str, torch.Tensor],
    item_feats: dict[str, torch.Tensor],
    log_q: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """Sampled softmax of each query over the batch's candidates, logits dot / temperature
    minus `log_q` (None: uncorrected), accidental hits masked."""
    pos = batch["item_idx"]
    cand = batch["candidates"]  # positives of the batch, then uniform negatives
    cand_in = batch["candidates_in"]  # with id dropout applied
    q = net.query_forward(
        batch["user_idx"], batch["user_feats"], batch["history"], batch["context"]
    )
    v = net.item_forward(
        cand_in, item_feats["genres"][cand], item_feats["title"][cand], item_feats["numerics"][cand]
    )
    b = len(pos)
    hits = pos[:, None] == cand[None, :]
    hits[:, :b] &= ~torch.eye(b, dtype=torch.bool, device=pos.device)
    logits = q @ v.T / temperature
    if log_q is not None:
        logits = logits - log_q[None, :]
    target = torch.arange(b, device=pos.device)
    return nn.functional.cross_entropy(logits.masked_fill(hits, float("-inf")), target)


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
    examples: TowerExamples,
    rows: np.ndarray,
    item_feats: dict[str, torch.Tensor],
    estimator: StreamingFrequencyEstimator,
    step: int,
    tp: TowerParams,
    rng: np.random.Generator,
    *,
    stream_rows: np.ndarray | None = None,
    loss_module: nn.Module | None = None,
) -> float:
    """One optimisation step on examples[rows]; `step` is the stream position of rows[0].

    The frequency estimate sees the batch's positives before their log Q is read. The
    expected count of a candidate is the batch's share of it (batch size x probability)
    plus the uniform negatives' (mixed_negatives / catalog size). Returns the loss.

    In a distributed run `rows` is this rank's shard of the global batch `stream_rows`:
    the estimate sees the whole global batch (every rank then holds the same estimate,
    the one a single process would), while the expected counts are those of the
    candidates this rank scores, its own positives and negatives. `loss_module` (the DDP
    wrapper, see `shortlist.models.distributed`) computes the loss in place of `net`, so
    that the gradients are averaged over the ranks. Batches go to the device of `net`.
    """
    n_items = len(item_feats["genres"]) - 1
    batch = make_batch(examples, rows, tp, rng, n_items)
    device = next(net.parameters()).device
    if device.type != "cpu":
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    log_q = None
    if tp.logq.enabled:
        stream = rows if stream_rows is None else stream_rows
        estimator.update(examples.item_idx[stream], step)
        p = estimator.probability(batch["candidates"].cpu().numpy())
        expected = len(rows) * p + tp.mixed_negatives / n_items
        log_q = torch.from_numpy(np.log(expected).astype(np.float32)).to(device)
    if loss_module is None:
        loss = batch_loss(net, batch, item_feats, log_q, tp.temperature)
    else:
        loss = loss_module(batch, item_feats, log_q, tp.temperature)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


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
