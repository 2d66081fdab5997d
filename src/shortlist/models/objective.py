"""What the towers optimise and how: the corrected in-batch softmax, the optimiser, one
step, and the averaged weights that are evaluated and kept.

The loss is a sampled softmax over the batch's candidates (the other positives of the
batch plus uniformly sampled items). Each candidate's logit is corrected by subtracting
log Q, its expected count among the candidates, from the streaming frequency estimate
(Yi et al. 2019), so that popular items are not pushed down merely for appearing often
as negatives. Candidates that are the positive's own item are masked (accidental hits).

At a large catalog the embedding tables dominate a step's memory traffic, not its
arithmetic. With sparse tables (`towers.sparse_embeddings`) each batch carries the
distinct rows it reads of the id, history and title tables (`prepare_batch`); the step
gathers them once (`shortlist.models.table_rows`), their gradients come back already
summed per row, `RowAdam` updates only those rows, and the weight average catches a row
up only when it changes (`WeightAverage`, exact because an untouched row does not move).
A background thread (`prefetch`, at the lowest priority) assembles the next batches
(examples, negatives, dropout, content, log Q, the tables' rows) while the current one
trains.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.profiler import record_function

from shortlist.config import TowerParams
from shortlist.models.examples import TowerExamples, make_batch
from shortlist.models.huge_pages import to_huge_pages, zeros_in_huge_pages
from shortlist.models.logq import StreamingFrequencyEstimator
from shortlist.models.row_adam import RowAdam
from shortlist.models.table_rows import distinct_rows
from shortlist.models.two_tower import history_bags


def batch_loss(
    net: nn.Module,
    batch: dict[str, torch.Tensor],
    item_feats: dict[str, torch.Tensor],
    log_q: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """Sampled softmax of each query over the batch's candidates, logits dot / temperature
    minus `log_q` (None: uncorrected), accidental hits masked."""
    cand = batch["candidates"]  # positives of the batch, then uniform negatives
    cand_in = batch["candidates_in"]  # with id dropout applied
    bags = {k: batch[f"bag_{k}"] for k in BAG_KEYS} if "bag_items" in batch else None
    rows = None
    if "rows_item_id" in batch:  # the sparse tables' distinct rows (see prepare_batch)
        rows = {n: {k: batch[f"{k}_{n}"] for k in ("rows", "local")} for n in ROW_LOOKUPS}
    q = net.query_forward(
        batch["user_idx"], batch["user_feats"], batch["history"], batch["context"], bags, rows
    )
    content = [
        batch[f"candidate_{k}"] if f"candidate_{k}" in batch else item_feats[k][cand]
        for k in ("genres", "title", "numerics")
    ]  # gathered with the batch where it was assembled ahead (see prepare_batch)
    v = net.item_forward(cand_in, *content, rows=rows)
    return _SampledSoftmax.apply(q, v, log_q, batch["hits"], temperature)


class _SampledSoftmax(torch.autograd.Function):
    """The mean cross-entropy of each query's positive (candidate i for query i) over the
    logits q v^T / temperature - log Q with the accidental hits at -inf, computed with
    the kernels autograd runs for the same expression, so the loss and the gradients of q
    and v are equal to its bits (tested).

    Autograd over the plain expression holds the (batch, candidates) logits twice and
    makes five more full passes over them in the backward pass (copies for the in-place
    masking of a view, the division's own tensor); here one (batch, candidates) buffer
    serves each pass: the logits are scaled, masked and log-softmaxed in place, and the
    gradient is computed, divided and masked in the buffer nll's gradient was written to.
    """

    @staticmethod
    def forward(ctx, q, v, log_q, hits, temperature):  # noqa: ANN001, ANN205 - torch's API
        logits = q.mm(v.t())
        logits.div_(temperature)
        if log_q is not None:
            logits.sub_(log_q[None, :])
        logits.view(-1).index_fill_(0, hits, float("-inf"))  # see accidental_hits
        # Written over the logits: the kernel reads a row whole before it writes it.
        out = torch.ops.aten._log_softmax.out(logits, 1, False, out=logits)
        target = torch.arange(len(q), device=q.device)
        loss, total_weight = torch.ops.aten.nll_loss_forward(out, target, None, 1, -100)
        ctx.save_for_backward(q, v, out, hits, target, total_weight)
        ctx.temperature = temperature
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: ANN001, ANN205 - torch's API
        q, v, out, hits, target, total_weight = ctx.saved_tensors
        g = torch.ops.aten.nll_loss_backward(grad, out, target, None, 1, -100, total_weight)
        # Written over g: the kernel sums a row of g before it writes that row.
        torch.ops.aten._log_softmax_backward_data.out(g, out, 1, out.dtype, out=g)
        g.div_(ctx.temperature)
        g.view(-1).index_fill_(0, hits, 0.0)
        # What autograd's matrix product returns: grad @ v, and (grad^T @ q) for v^T.
        return g.mm(v), g.t().mm(q), None, None, None


#: The history's bag index (`history_bags`), carried in a batch as "bag_<key>".
BAG_KEYS = ("items", "inverse", "positions", "offsets")

#: The other sparse tables' lookups a batch makes through their distinct rows
#: (`distinct_rows`, carried as "rows_<table>" and "local_<table>"): the batch key of the
#: indices, and whether row 0 must be among the rows (the title's padding).
ROW_LOOKUPS = {
    "item_id": ("candidates_in", False),
    "user_id": ("user_idx", False),
    "title": ("candidate_title", True),
}

#: The embedding tables that take sparse gradients with `towers.sparse_embeddings`: one
#: row per item, user or title bucket, of which a batch touches a few thousand.
SPARSE_TABLES = ("item_id", "history_item", "user_id", "title")


def resolve_sparse(tp: TowerParams, n_items: int, distributed: bool = False) -> bool:
    """Whether this run trains sparse tables: `on`/`off` as set, `auto` from
    `sparse_min_items` catalog items up. A distributed run trains dense tables (DDP's
    all-reduce is for dense gradients)."""
    if distributed or tp.sparse_embeddings == "off":
        return False
    return tp.sparse_embeddings == "on" or n_items >= tp.sparse_min_items


def set_sparse(net: nn.Module, sparse: bool) -> None:
    """Make the tables of SPARSE_TABLES produce sparse (or dense) gradients. The weights
    and the saved model are the same either way. Sparse tables are read and written at
    random rows, so their weights move into huge pages (`to_huge_pages`), as does the
    history's genre lookup, read at the same rows."""
    for name in SPARSE_TABLES:
        table = getattr(net, name)
        table.sparse = sparse
        if sparse:
            table.weight.data = to_huge_pages(table.weight.data)
    if sparse and isinstance(getattr(net, "genre_table", None), torch.Tensor):
        net.genre_table = to_huge_pages(net.genre_table)


def _table_params(net: nn.Module) -> list[nn.Parameter]:
    return [getattr(net, name).weight for name in SPARSE_TABLES if getattr(net, name).sparse]


class TableOptimizer:
    """Adam on the sparse tables' touched rows (`RowAdam`: lazy, fused Adam's
    arithmetic), fused AdamW on every other parameter. Weight decay, if set, applies to
    the latter."""

    def __init__(self, sparse: list[nn.Parameter], dense: list[nn.Parameter], tp: TowerParams):
        self.sparse = RowAdam(sparse, lr=tp.learning_rate)
        self.dense = torch.optim.AdamW(
            dense, lr=tp.learning_rate, weight_decay=tp.weight_decay, fused=True
        )
        self.param_groups = self.sparse.param_groups + self.dense.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.sparse.zero_grad(set_to_none)
        self.dense.zero_grad(set_to_none)

    def step(self) -> None:
        self.sparse.step()
        self.dense.step()

    @property
    def moved(self) -> dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The table rows the last step moved (`RowAdam.moved`)."""
        return self.sparse.moved


def make_optimizer(net: nn.Module, tp: TowerParams) -> torch.optim.Optimizer | TableOptimizer:
    """The towers' optimizer (training and the throughput benchmark build it here).

    AdamW with the fused kernel, which updates every parameter tensor in one pass: ~10%
    less time a step on CPU here than the per-tensor loop. Where the tables are sparse
    (`set_sparse`), a `TableOptimizer`: `RowAdam` on them, the same AdamW on the rest.
    """
    tables = _table_params(net)
    if tables:
        ids = {id(p) for p in tables}
        rest = [p for p in net.parameters() if id(p) not in ids]
        return TableOptimizer(tables, rest, tp)
    return torch.optim.AdamW(
        net.parameters(), lr=tp.learning_rate, weight_decay=tp.weight_decay, fused=True
    )


def prepare_batch(
    examples: TowerExamples,
    rows: np.ndarray,
    item_feats: dict[str, torch.Tensor],
    estimator: StreamingFrequencyEstimator,
    step: int,
    tp: TowerParams,
    rng: np.random.Generator,
    stream_rows: np.ndarray | None = None,
    *,
    table_rows: bool = False,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Everything of one step that does not depend on the weights: the batch of
    examples[rows] (`make_batch`), its candidates' content, and log Q of the candidates
    after the frequency estimate has seen the batch's positives (None with logQ off).

    The expected count of a candidate is the batch's share of it (batch size x
    probability) plus the uniform negatives' (mixed_negatives / catalog size). In a
    distributed run `rows` is this rank's shard of the global batch `stream_rows`: the
    estimate sees the whole global batch (every rank then holds the same estimate, the
    one a single process would), while the expected counts are those of the candidates
    this rank scores. Batches stay on the CPU (`apply_step` moves them). With
    `table_rows` (sparse tables) the batch carries the history's bag index
    (`history_bags`) and the other tables' distinct rows (`ROW_LOOKUPS`): each table then
    gets one gradient row per distinct row it read, already summed.
    """
    n_items = len(item_feats["genres"]) - 1
    with record_function("batch assembly"):
        batch = make_batch(examples, rows, tp, rng, n_items)
        cand = batch["candidates"]
        for k in ("genres", "title", "numerics"):
            batch[f"candidate_{k}"] = item_feats[k].index_select(0, cand)
        if table_rows:
            batch.update({f"bag_{k}": v for k, v in history_bags(batch["history"]).items()})
            for name, (key, with_zero) in ROW_LOOKUPS.items():
                index = distinct_rows(batch[key], with_zero=with_zero)
                batch.update({f"{k}_{name}": v for k, v in index.items()})
    log_q = None
    if tp.logq.enabled:
        with record_function("logQ"):
            stream = rows if stream_rows is None else stream_rows
            estimator.update(examples.item_idx[stream], step)
            p = estimator.probability(cand.numpy())
            expected = len(rows) * p + tp.mixed_negatives / n_items
            log_q = torch.from_numpy(np.log(expected).astype(np.float32))
    return batch, log_q


def apply_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer | TableOptimizer,
    prepared: tuple[dict[str, torch.Tensor], torch.Tensor | None],
    item_feats: dict[str, torch.Tensor],
    tp: TowerParams,
    *,
    loss_module: nn.Module | None = None,
    ema: WeightAverage | None = None,
) -> float:
    """One optimisation step on a prepared batch (`prepare_batch`); returns the loss.

    `loss_module` (the DDP wrapper, see `shortlist.models.distributed`) computes the loss
    in place of `net`, so that the gradients are averaged over the ranks. With `ema`, the
    weight average follows the step. Batches go to the device of `net`.
    """
    batch, log_q = prepared
    device = next(net.parameters()).device
    if device.type != "cpu":
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        log_q = None if log_q is None else log_q.to(device, non_blocking=True)
        item_feats = {k: v.to(device) for k, v in item_feats.items()}
    with record_function("forward"):
        if loss_module is None:
            loss = batch_loss(net, batch, item_feats, log_q, tp.temperature)
        else:
            loss = loss_module(batch, item_feats, log_q, tp.temperature)
    optimizer.zero_grad(set_to_none=True)
    with record_function("backward"):
        loss.backward()
    with record_function("optimizer step"):
        optimizer.step()
    if ema is not None:
        with record_function("EMA of weights"):
            ema.update(net, getattr(optimizer, "moved", None))
    return float(loss.detach())


def train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer | TableOptimizer,
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
    ema: WeightAverage | None = None,
) -> float:
    """One optimisation step on examples[rows]; `step` is the stream position of rows[0]:
    `prepare_batch` then `apply_step` (see both). Returns the loss."""
    prepared = prepare_batch(examples, rows, item_feats, estimator, step, tp, rng, stream_rows)
    return apply_step(net, optimizer, prepared, item_feats, tp, loss_module=loss_module, ema=ema)


_DONE = object()

#: The assembling thread's nice value: the lowest priority, so that it takes a core
#: where the step leaves one idle instead of preempting the step's threads, whose
#: parallel work then waits for the preempted one (+3% to +10% examples/s on 2 cores in
#: alternating blocks, benchmarks/HISTORY.md).
PREFETCH_NICE = 19


def _lowest_priority() -> None:
    """Lower the calling thread's scheduling priority to PREFETCH_NICE (Linux, where a
    thread has its own nice value; elsewhere nothing changes)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PREFETCH_NICE)


def prefetch(items: Iterable[Any], fn: Callable[[Any], Any], depth: int) -> Iterator[Any]:
    """fn(item) for each item, in order, computed up to `depth` items ahead by one
    background thread (depth 0: inline, in the caller's thread).

    One thread calls fn in order, so a random stream or an estimator that fn advances
    sees exactly the calls of the plain loop: the results are the same, only earlier.
    An exception in fn is raised here, at the item it failed on. Leaving the loop early
    stops the thread after at most `depth` more items.
    """
    if depth <= 0:
        for item in items:
            yield fn(item)
        return
    out: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        # One intra-op thread here (the setting is per thread): the step's own threads
        # already take the cores, and more threads than cores make both sides spin and
        # wait (on 2 cores, 2 threads here made steps ~1.5x slower than no prefetching).
        torch.set_num_threads(1)
        _lowest_priority()
        try:
            for item in items:
                if stop.is_set():
                    return
                value = fn(item)
                while not stop.is_set():
                    try:
                        out.put((True, value), timeout=0.1)
                        break
                    except queue.Full:
                        continue
            out.put((True, _DONE))
        except BaseException as exc:  # handed to the consumer
            out.put((False, exc))

    worker = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            with record_function("batch wait"):
                ok, value = out.get()
            if not ok:
                raise value
            if value is _DONE:
                return
            yield value
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                out.get_nowait()
            worker.join(timeout=0.05)


class WeightAverage:
    """An exponential moving average of a network's parameters (Polyak averaging).

    After each optimisation step the copy moves towards the trained weights by
    1 - decay (decay warmed up as (1 + k) / (10 + k) over the first steps, so the random
    initialisation fades fast). On a small data set the averaged weights are less noisy
    from step to step than the last ones, so the early-stopping epoch is picked on less
    noise and the kept model generalises better.

    Sparse tables (`set_sparse`) are averaged lazily: a step moves the average of the
    rows it touched only. A row the optimiser did not touch keeps its weights w, and k
    steps of averaging towards a constant w give w + (avg - w) * (d_1 ... d_k): so after
    a step (`update`) each row `RowAdam` moved (its `moved`: the rows, their weights
    before and after) has its average caught up towards the weights it held with the
    product of the decays it missed, then moved by this step's; `flush` catches up every
    row before the average is read (evaluation, keeping the best weights). The result
    equals the dense per-step average up to rounding, with no pass over untouched rows.
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        self.net = copy.deepcopy(net).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0
        names = [n for n in SPARSE_TABLES if getattr(getattr(net, n, None), "sparse", False)]
        self.tables = names
        table_params = {id(getattr(net, n).weight) for n in names}
        pairs = list(zip(self.net.parameters(), net.parameters(), strict=True))
        dense = [(a, c) for a, c in pairs if id(c) not in table_params]
        self._dense = ([a for a, _ in dense], [c for _, c in dense])
        # Sum of log decays applied so far, and per table row the sum at its last catch-up.
        self._log_decay = 0.0
        self._synced = {
            n: zeros_in_huge_pages(getattr(net, n).weight.shape[:1], dtype=torch.float64)
            for n in names
        }
        for n in names:  # read and written at random rows, as the tables
            avg = getattr(self.net, n).weight
            avg.data = to_huge_pages(avg.data)

    @torch.no_grad()
    def _catch_up_all(self, name: str, cur: torch.Tensor) -> None:
        avg = getattr(self.net, name).weight
        synced = self._synced[name]
        factor = torch.exp(self._log_decay - synced).to(avg.dtype)[:, None]
        avg.copy_(cur + (avg - cur) * factor)
        synced.fill_(self._log_decay)

    @torch.no_grad()
    def update(
        self,
        net: nn.Module,
        moved: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        """Follow the step just taken: every dense parameter, and the sparse tables' rows
        in `moved` (the optimiser's record, `RowAdam.moved`; a table it lacks did not
        move)."""
        if self.tables and moved is None:
            raise ValueError("sparse tables are averaged from the rows the step moved")
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(*self._dense, 1.0 - d)
        missed = self._log_decay  # the decays up to the previous step
        self._log_decay += math.log(d)
        for name in self.tables:
            record = moved.get(getattr(net, name).weight)
            if record is None:
                continue
            rows, held, now = record
            avg, synced = getattr(self.net, name).weight, self._synced[name]
            # Caught up to the previous step towards the weights held, then this step.
            factor = torch.exp(missed - synced.index_select(0, rows)).to(avg.dtype)[:, None]
            caught = held + (avg.index_select(0, rows) - held) * factor
            avg.index_copy_(0, rows, caught.lerp_(now, 1.0 - d))
            synced.index_fill_(0, rows, self._log_decay)

    @torch.no_grad()
    def flush(self, net: nn.Module) -> None:
        """Bring every row of the sparse tables' average up to date (one pass over the
        tables; nothing to do without sparse tables)."""
        for name in self.tables:
            self._catch_up_all(name, getattr(net, name).weight)
