"""RowAdam: fused Adam's step on the rows a gradient names, lazy on the others."""

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


def test_rows_touched_every_step_move_as_fused_adam_moves_them():
    """Where every step names every row, RowAdam is `Adam(fused=True)` to the last bit."""
    torch.manual_seed(0)
    start = torch.randn(50, 8)
    ref = torch.nn.Parameter(start.clone())
    row = torch.nn.Parameter(start.clone())
    opt_ref = torch.optim.Adam([ref], lr=0.01, betas=(0.8, 0.99), eps=1e-6, fused=True)
    opt_row = RowAdam([row], lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    every = torch.arange(50).repeat(2)  # each row named twice: the values are summed
    gen = torch.Generator().manual_seed(1)
    for _ in range(12):
        grad = torch.sparse_coo_tensor(
            every[None], torch.randn(100, 8, generator=gen), (50, 8), check_invariants=True
        )
        ref.grad, row.grad = grad.to_dense(), grad
        opt_ref.step()
        opt_row.step()
    assert not torch.equal(ref.detach(), start)
    assert torch.equal(ref.detach(), row.detach())
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(opt_ref.state[ref][key], opt_row.state[row][key])


def test_rows_a_step_skips_keep_their_weights_and_moments():
    """Lazy Adam: a step leaves the rows its gradient does not name as they were, moments
    included, and counts the step for the bias correction of the rows it names."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(500, 8))
    opt = RowAdam([p], lr=0.01)
    for k, grad in enumerate(_grads(6, 500, 8, 300)):
        w0 = p.detach().clone()
        m0 = opt.state[p]["exp_avg"].clone() if opt.state[p] else torch.zeros_like(w0)
        p.grad = grad
        opt.step()
        named = torch.zeros(500, dtype=torch.bool)
        named[grad.coalesce().indices()[0]] = True
        assert (~named).any() and torch.equal(p.detach()[~named], w0[~named])
        assert torch.equal(opt.state[p]["exp_avg"][~named], m0[~named])
        assert (p.detach()[named] != w0[named]).any(1).all()
        assert float(opt.state[p]["step"]) == k + 1


def test_row_adam_takes_sorted_distinct_rows_as_they_are():
    """A gradient whose rows are already sorted and distinct (what `gather_rows` gives,
    unflagged) steps exactly as its coalesced copy; unsorted rows are still summed."""
    torch.manual_seed(0)
    start = torch.randn(40, 4)
    a, b = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    opt_a, opt_b = RowAdam([a], lr=0.1), RowAdam([b], lr=0.1)
    rows, values = torch.tensor([1, 5, 6, 30]), torch.randn(4, 4)
    a.grad = torch.sparse_coo_tensor(rows[None], values, (40, 4), check_invariants=True)
    assert not a.grad.is_coalesced()
    b.grad = a.grad.coalesce()
    opt_a.step()
    opt_b.step()
    assert torch.equal(a.detach(), b.detach())
    shuffled = torch.tensor([6, 1, 6, 30])
    a.grad = torch.sparse_coo_tensor(shuffled[None], values, (40, 4), check_invariants=True)
    b.grad = a.grad.coalesce()
    opt_a.step()
    opt_b.step()
    assert torch.equal(a.detach(), b.detach())
    assert torch.equal(opt_a.moved[a][0], torch.tensor([1, 6, 30]))


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
