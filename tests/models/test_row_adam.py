"""RowAdam: SparseAdam's step, to the last bit, on the rows a gradient names."""

from __future__ import annotations

import pytest
import torch

from shortlist.models.row_adam import RowAdam


def _grads(steps: int, rows: int, width: int, touched: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):  # repeated rows (summed on coalescing) and rows skipped a step
        idx = torch.randint(0, rows, (touched,), generator=gen)
        values = torch.randn(touched, width, generator=gen)
        out.append(torch.sparse_coo_tensor(idx[None], values, (rows, width), check_invariants=True))
    return out


def test_row_adam_equals_sparse_adam_bit_for_bit():
    torch.manual_seed(0)
    start = torch.randn(500, 8)
    ref = torch.nn.Parameter(start.clone())
    row = torch.nn.Parameter(start.clone())
    opt_ref = torch.optim.SparseAdam([ref], lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    opt_row = RowAdam([row], lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    for grad in _grads(12, 500, 8, 300):
        ref.grad, row.grad = grad.clone(), grad.clone()
        opt_ref.step()
        opt_row.step()
    assert not torch.equal(ref.detach(), start)
    assert torch.equal(ref.detach(), row.detach())
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(opt_ref.state[ref][key], opt_row.state[row][key])
    untouched = torch.ones(500, dtype=torch.bool)
    for grad in _grads(12, 500, 8, 300):
        untouched[grad.coalesce().indices()[0]] = False
    assert untouched.any() and torch.equal(row.detach()[untouched], start[untouched])


def test_row_adam_records_the_rows_it_moved():
    """`moved` holds each parameter's rows of the last step with their weights before and
    after it (what the weight average catches up from); untouched rows are not in it."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(50, 4))
    opt = RowAdam([p], lr=0.1)
    for grad in _grads(3, 50, 4, 20):
        start = p.detach().clone()
        p.grad = grad
        opt.step()
        rows, before, after = opt.moved[p]
        assert torch.equal(rows, grad.coalesce().indices()[0])
        assert torch.equal(before, start[rows]) and torch.equal(after, p.detach()[rows])
        others = torch.ones(50, dtype=torch.bool)
        others[rows] = False
        assert torch.equal(p.detach()[others], start[others])
    p.grad = None
    opt.step()
    assert opt.moved == {}


def test_row_adam_refuses_dense_gradients_and_bad_settings():
    p = torch.nn.Parameter(torch.zeros(3, 2))
    p.grad = torch.ones(3, 2)
    with pytest.raises(ValueError, match="sparse gradients"):
        RowAdam([p]).step()
    with pytest.raises(ValueError, match="invalid RowAdam"):
        RowAdam([p], lr=0.0)
