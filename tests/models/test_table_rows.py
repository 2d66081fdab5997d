"""The sparse tables' rows gathered once per step: the same lookups, the same gradients,
one already-summed gradient row per distinct table row."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from shortlist.models.logq import StreamingFrequencyEstimator
from shortlist.models.objective import SPARSE_TABLES, batch_loss, prepare_batch
from shortlist.models.table_rows import distinct_rows, gather_rows
from tests.models.conftest import make_batch, make_net


# Marked in a table (a range of 20 and of 5,000 for 192 values), sorted (int32, int64).
@pytest.mark.parametrize("top", [20, 5_000, 100_000, 2**33])
@pytest.mark.parametrize("with_zero", [False, True])
def test_distinct_rows_are_torch_unique(top, with_zero):
    gen = torch.Generator().manual_seed(top)
    indices = torch.randint(1, top, (64, 3), generator=gen)
    got = distinct_rows(indices, with_zero=with_zero)
    flat = indices.flatten()
    if with_zero:
        flat = torch.cat([torch.zeros(1, dtype=flat.dtype), flat])
    rows, inverse = torch.unique(flat, return_inverse=True)
    assert torch.equal(got["rows"], rows)
    assert torch.equal(got["local"], (inverse[1:] if with_zero else inverse).view(64, 3))
    assert torch.equal(got["rows"][got["local"]], indices)
    assert (got["rows"][0] == 0) == with_zero


def test_distinct_rows_of_nothing():
    empty = torch.zeros((0, 4), dtype=torch.int64)
    assert distinct_rows(empty)["rows"].numel() == 0
    assert distinct_rows(empty)["local"].shape == (0, 4)
    assert distinct_rows(empty, with_zero=True)["rows"].tolist() == [0]


def test_gathered_rows_give_the_lookup_and_its_gradient_coalesced():
    gen = torch.Generator().manual_seed(0)
    indices = torch.randint(0, 30, (200,), generator=gen)
    upstream = torch.randn(200, 5, generator=gen)
    grads = []
    for through_rows in (False, True):
        weight = nn.Parameter(torch.randn(30, 5, generator=torch.Generator().manual_seed(1)))
        if through_rows:
            index = distinct_rows(indices)
            out = nn.functional.embedding(index["local"], gather_rows(weight, index["rows"]))
        else:
            out = nn.functional.embedding(indices, weight)
        (out * upstream).sum().backward()
        grads.append((out.detach(), weight.grad))
    (want_out, want_grad), (out, grad) = grads
    assert torch.equal(out, want_out)
    assert grad.is_sparse
    assert torch.equal(grad._indices()[0], torch.unique(indices))  # one row each, sorted
    torch.testing.assert_close(grad.to_dense(), want_grad, rtol=1e-6, atol=1e-6)


def test_a_batch_through_its_table_rows_trains_as_the_plain_lookups(setup):  # noqa: F811
    """`prepare_batch(table_rows=True)` (the sparse path) gives the loss and every
    gradient of the same batch looked up directly, one gradient row per distinct row."""
    tp, _, _, examples, feats = setup
    rows = np.arange(48)
    plain, log_q = make_batch(setup, rows)
    est = StreamingFrequencyEstimator(4096, tp.logq.alpha)
    est.update(examples.item_idx, 0)
    gathered, log_q2 = prepare_batch(
        examples, rows, feats, est, est.steps_seen, tp, np.random.default_rng(0), table_rows=True
    )
    assert {"rows_item_id", "local_title", "bag_items"} <= gathered.keys()
    torch.testing.assert_close(log_q, log_q2, rtol=0, atol=0)
    out = []
    for batch in (plain, gathered):
        net = make_net(setup, True)
        loss = batch_loss(net, batch, feats, log_q, tp.temperature)
        loss.backward()
        out.append((loss.detach(), {n: p.grad for n, p in net.named_parameters()}))
    (loss_plain, g_plain), (loss_rows, g_rows) = out
    torch.testing.assert_close(loss_rows, loss_plain, rtol=1e-6, atol=1e-7)
    for name, g in g_plain.items():
        if g is None:
            assert g_rows[name] is None, name
            continue
        if g.is_sparse:
            g = g.coalesce().to_dense()
            table = name.removesuffix(".weight")
            assert table in SPARSE_TABLES
            got = g_rows[name]
            rows_used = torch.unique(got._indices()[0])
            assert len(rows_used) == got._nnz(), name  # one value per distinct row
            got = got.to_dense()
        else:
            got = g_rows[name]
        torch.testing.assert_close(got, g, rtol=1e-5, atol=1e-6, msg=name)
