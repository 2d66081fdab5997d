"""Adam for embedding tables with sparse gradients, updating only the rows a step touched.

The arithmetic is `torch.optim.SparseAdam`'s, operation for operation (its results are
equal to the last bit, tested), but on the rows directly: the moments and the weights are
read with `index_select` and written with `index_add_`, instead of through sparse tensors
(`sparse_mask`, sparse + dense), which cost twice as much a step on a table of a million
rows. Like SparseAdam, a row's moments do not decay on the steps that skip it.

Each step leaves, per parameter, the rows it moved with their values before and after
(`moved`): the weight average catches those rows up from them without reading the table
again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class RowAdam(torch.optim.Optimizer):
    """Adam on parameters whose gradients are sparse (row-wise: `nn.Embedding(sparse=True)`)."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if lr <= 0 or eps <= 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid RowAdam settings: lr {lr}, betas {betas}, eps {eps}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        #: The last step's rows per parameter: (rows, their weights before, after).
        self.moved: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's Optimizer signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.moved = {}
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise ValueError("RowAdam takes sparse gradients; use Adam for dense ones")
                grad = p.grad.coalesce()  # the update is non-linear: one value per row
                rows, values = grad._indices()[0], grad._values()
                if values.numel() == 0:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                # old <- b * old + (1 - b) * new, as old += (1 - b) * (new - old)
                old_avg = exp_avg.index_select(0, rows)
                avg_update = values.sub(old_avg).mul_(1 - beta1)
                exp_avg.index_add_(0, rows, avg_update)
                old_sq = exp_avg_sq.index_select(0, rows)
                sq_update = values.pow(2).sub_(old_sq).mul_(1 - beta2)
                exp_avg_sq.index_add_(0, rows, sq_update)
                numer = avg_update.add_(old_avg)
                denom = sq_update.add_(old_sq).sqrt_().add_(group["eps"])
                step = state["step"]
                step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                update = -step_size * numer.div_(denom)
                before = p.index_select(0, rows)
                p.index_add_(0, rows, update)
                after = before + update  # the rows are distinct (coalesced): what was added
                self.moved[p] = (rows, before, after)
        return loss
