"""The rows of an embedding table that one batch reads, gathered once for the step.

With sparse tables a step reads a few thousand rows of tables of up to millions. The
batch carries, per table, the distinct rows it reads (sorted) and each lookup's position
among them (`distinct_rows`, found on the assembling thread). The step gathers those rows
once (`gather_rows`) and looks up within them; their gradient reaches the table as a
sparse gradient that is already coalesced, one value per distinct row, so the optimiser
has nothing left to sort or sum.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.autograd.function import once_differentiable

#: Marking costs grow with the values' range, sorting with their count: they cost the
#: same at a range ~100 times the count here. Marking 10k history items from a range of
#: 300k (30x) takes 0.2 ms against 0.5 ms to sort them (benchmarks/HISTORY.md).
MARK_MAX_SPREAD = 64


def distinct_rows(indices: torch.Tensor, *, with_zero: bool = False) -> dict[str, torch.Tensor]:
    """The distinct values of `indices`, sorted (`rows`), and `indices` as positions in
    them (`local`, same shape). `with_zero` keeps row 0 among them even when unused, so
    that a padding index 0 is position 0 too.

    Values from a range no wider than `MARK_MAX_SPREAD` times their count are marked in a
    table of that range instead of sorted (the title's buckets, the history's items).
    """
    values = indices.numpy().ravel()
    top = int(values.max()) + 1 if len(values) else 1
    if top <= MARK_MAX_SPREAD * len(values):
        seen = np.zeros(top, dtype=bool)
        seen[values] = True
        seen[0] |= with_zero
        rows = np.flatnonzero(seen)
        position = np.empty(top, dtype=np.int32)  # half the memory touched of int64
        position[rows] = np.arange(len(rows), dtype=np.int32)
        local = position[values]
    else:
        if with_zero:
            values = np.concatenate([np.zeros(1, dtype=values.dtype), values])
        if top <= np.iinfo(np.int32).max:  # sorted as int32: the same result, ~1.5x faster
            values = values.astype(np.int32)
        rows, local = np.unique(values, return_inverse=True)
        local = local[1:] if with_zero else local
    return {
        "rows": torch.from_numpy(rows.astype(np.int64, copy=False)),
        "local": torch.from_numpy(local.astype(np.int64, copy=False)).view(indices.shape),
    }


class _GatherRows(torch.autograd.Function):
    """weight[rows] for distinct sorted `rows`, whose gradient is the coalesced sparse
    gradient of `weight` (what a sparse embedding's gradient coalesces to)."""

    @staticmethod
    def forward(ctx, weight, rows):  # noqa: ANN001, ANN205 - torch's API
        ctx.save_for_backward(rows)
        ctx.shape = weight.shape
        return weight.index_select(0, rows)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # noqa: ANN001, ANN205 - torch's API
        (rows,) = ctx.saved_tensors
        values = grad.contiguous()
        sparse = torch.sparse_coo_tensor(
            rows[None], values, ctx.shape, is_coalesced=True, check_invariants=False
        )
        return sparse, None


def gather_rows(weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """weight[rows], `rows` distinct and sorted (`distinct_rows`); the gradient reaches
    `weight` as a coalesced sparse tensor with one value per row."""
    return _GatherRows.apply(weight, rows)
