"""Adam for embedding tables with sparse gradients, updating only the rows a step touched.

Lazy Adam, as `torch.optim.SparseAdam`: a row's moments move only on the steps whose
gradient names it, and the bias correction counts the table's steps. Each step gathers
the named rows of every table's weights and moments, updates them all with the kernel of
`Adam(fused=True)` (`torch._fused_adam_`: one pass over the gathered rows, where the
same step written in tensor operations makes fifteen), and writes them back. A row named
by every step therefore moves exactly as fused Adam moves it (tested). Adam adds eps
after the bias correction, SparseAdam before it: they differ where a gradient is as
small as eps.

Each step leaves, per parameter, the rows it moved with their values before and after
(`moved`): the weight average catches those rows up from them without reading the table
again.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from shortlist.models.huge_pages import zeros_in_huge_pages


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
            tables, rows, weights, grads, avgs, sqs, steps = [], [], [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise ValueError("RowAdam takes sparse gradients; use Adam for dense ones")
                grad = _coalesced(p.grad)
                if grad._nnz() == 0:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    # Read and written at random rows, as the table: in huge pages.
                    state["exp_avg"] = zeros_in_huge_pages(p.shape, dtype=p.dtype, device=p.device)
                    state["exp_avg_sq"] = zeros_in_huge_pages(
                        p.shape, dtype=p.dtype, device=p.device
                    )
                idx = grad._indices()[0]
                tables.append(p)
                rows.append(idx)
                weights.append(p.index_select(0, idx))
                grads.append(grad._values().contiguous())
                avgs.append(state["exp_avg"].index_select(0, idx))
                sqs.append(state["exp_avg_sq"].index_select(0, idx))
                steps.append(state["step"])
            if not tables:
                continue
            before = [w.clone() for w in weights]
            beta1, beta2 = group["betas"]
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(
                weights,
                grads,
                avgs,
                sqs,
                [],
                steps,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                weight_decay=0.0,
                eps=group["eps"],
                amsgrad=False,
                maximize=False,
            )
            for p, idx, w, avg, sq, held in zip(
                tables, rows, weights, avgs, sqs, before, strict=True
            ):
                state = self.state[p]
                p.index_copy_(0, idx, w)
                state["exp_avg"].index_copy_(0, idx, avg)
                state["exp_avg_sq"].index_copy_(0, idx, sq)
                self.moved[p] = (idx, held, w)
        return loss


def _coalesced(grad: torch.Tensor) -> torch.Tensor:
    """`grad` with one value per row: as it is where its rows are already distinct and
    sorted (the gradient of `gather_rows`, whose flag autograd's accumulation drops),
    else coalesced (sorted, duplicates summed)."""
    if grad.is_coalesced():
        return grad
    rows = grad._indices()[0]
    if bool((rows[1:] > rows[:-1]).all()):
        return grad._coalesced_(True)
    return grad.coalesce()
