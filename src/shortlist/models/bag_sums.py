"""Sums of table rows over bags, with a backward pass that neither sorts nor calls a
dot product per sample.

`nn.functional.embedding_bag` pools fast, but its CPU backward pass sorts the bag
entries to group the table's gradient by row (~0.35 ms for 10k entries here) and gets
each per-sample weight's gradient from one BLAS dot product per entry (~0.4 ms for
10k). With sparse tables the rows pooled are a batch's few thousand gathered rows
(`shortlist.models.table_rows`), so both gradients are small dense sums: the table's
gradient is an `index_add_` of each entry's bag gradient, and a weight's gradient is
its bag gradient times its row, summed. The values are those of `embedding_bag`'s
gradients up to float rounding (tested); only the order of the additions differs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable


class _BagSums(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, inverse, offsets, bag_of, weights, padding_row):  # noqa: ANN001, ANN205 - torch's API
        ctx.save_for_backward(rows, inverse, bag_of, weights)
        ctx.padding_row = padding_row
        return nn.functional.embedding_bag(
            inverse,
            rows,
            offsets,
            mode="sum",
            per_sample_weights=weights,
            padding_idx=padding_row,
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # noqa: ANN001, ANN205 - torch's API
        rows, inverse, bag_of, weights = ctx.saved_tensors
        flat = inverse.reshape(-1)
        entry_grad = grad.index_select(0, bag_of)  # each entry's bag gradient
        grad_weights = grad_rows = None
        if ctx.needs_input_grad[4]:
            grad_weights = rows.index_select(0, flat).mul_(entry_grad).sum(1)
            if ctx.padding_row is not None:
                grad_weights.masked_fill_(flat == ctx.padding_row, 0.0)
            grad_weights = grad_weights.view_as(weights)
        if ctx.needs_input_grad[0]:
            if weights is not None:
                entry_grad.mul_(weights.reshape(-1, 1))
            grad_rows = torch.zeros_like(rows).index_add_(0, flat, entry_grad)
            if ctx.padding_row is not None:
                grad_rows[ctx.padding_row] = 0.0
        return grad_rows, None, None, None, grad_weights, None


def bag_sums(
    rows: torch.Tensor,
    inverse: torch.Tensor,
    offsets: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    *,
    bag_of: torch.Tensor | None = None,
    padding_row: int | None = None,
) -> torch.Tensor:
    """`embedding_bag(inverse, rows, offsets, mode="sum", per_sample_weights=weights,
    padding_idx=padding_row)`, differentiable in `rows` and `weights`.

    `inverse` is 2-D (one bag per row, `offsets` None) or 1-D with `offsets` (where each
    bag starts) and `bag_of` (each entry's bag, ascending; found from `offsets` if not
    given).
    """
    if inverse.dim() == 2:
        n_bags, size = inverse.shape
        bag_of = torch.arange(n_bags, device=inverse.device).repeat_interleave(size)
    elif bag_of is None:
        if offsets is None:
            raise ValueError("1-D bag entries need the offsets where each bag starts")
        ends = torch.cat([offsets[1:], offsets.new_tensor([len(inverse)])])
        bag_of = torch.arange(len(offsets), device=inverse.device).repeat_interleave(ends - offsets)
    return _BagSums.apply(rows, inverse, offsets, bag_of, weights, padding_row)
