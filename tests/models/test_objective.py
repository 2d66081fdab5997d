"""The towers' loss: the sampled softmax's own backward pass must give autograd's bits.

`batch_loss` computes the corrected in-batch softmax with a hand-written backward pass
that saves five full passes over the (batch, candidates) logits. Its loss and its
gradients must equal, bit for bit, what autograd gives for the plain expression below,
so that training with it is training the same model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from shortlist.models.objective import _SampledSoftmax, batch_loss
from tests.models.conftest import make_batch, make_net


def _autograd_loss(q, v, log_q, hits, temperature):
    """The loss as the plain expression autograd differentiates."""
    logits = (q @ v.T).div_(temperature)
    if log_q is not None:
        logits.sub_(log_q[None, :])
    logits.view(-1).index_fill_(0, hits, float("-inf"))
    return nn.functional.cross_entropy(logits, torch.arange(len(q)))


def _grads(loss_fn, q, v, *args):
    q = q.detach().clone().requires_grad_()
    v = v.detach().clone().requires_grad_()
    loss = loss_fn(q, v, *args)
    loss.backward()
    return loss.detach(), q.grad, v.grad


@pytest.mark.parametrize("with_log_q", [True, False])
@pytest.mark.parametrize("n_hits", [0, 200])
def test_sampled_softmax_gives_autograds_bits(with_log_q, n_hits):
    gen = torch.Generator().manual_seed(n_hits + with_log_q)
    b, n_cand, d = 256, 384, 32
    q = nn.functional.normalize(torch.randn(b, d, generator=gen), dim=1)
    v = nn.functional.normalize(torch.randn(n_cand, d, generator=gen), dim=1)
    log_q = torch.randn(n_cand, generator=gen) - 4 if with_log_q else None
    flat = torch.randperm(b * n_cand, generator=gen)
    hits = flat[flat // n_cand != flat % n_cand][:n_hits]  # never a query's own positive
    want = _grads(_autograd_loss, q, v, log_q, hits, 0.05)
    got = _grads(_SampledSoftmax.apply, q, v, log_q, hits, 0.05)
    for name, a, c in zip(("loss", "q grad", "v grad"), want, got, strict=True):
        assert torch.equal(a, c), name
    assert got[0].item() > 0 and got[1].abs().sum() > 0


@pytest.mark.parametrize("sparse", [False, True])
def test_batch_loss_trains_every_weight_as_autograd_would(setup, sparse):  # noqa: F811
    """On a real batch (logQ, accidental hits, id dropout), every parameter's gradient
    through `batch_loss` equals the plain expression's."""
    tp, _, _, _, feats = setup
    batch, log_q = make_batch(setup, np.arange(40))
    assert len(batch["hits"]) > 0  # the tiny catalog repeats items: the mask is exercised
    grads = []
    for fn in (None, _autograd_loss):
        net = make_net(setup, sparse)
        if fn is None:
            loss = batch_loss(net, batch, feats, log_q, tp.temperature)
        else:
            q = net.query_forward(
                batch["user_idx"], batch["user_feats"], batch["history"], batch["context"]
            )
            content = [feats[k][batch["candidates"]] for k in ("genres", "title", "numerics")]
            v = net.item_forward(batch["candidates_in"], *content)
            loss = fn(q, v, log_q, batch["hits"], tp.temperature)
        loss.backward()
        grads.append({n: p.grad for n, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 5
    for name, g in grads[0].items():
        want = grads[1][name]
        if g.is_sparse:
            g, want = g.coalesce().to_dense(), want.coalesce().to_dense()
        assert torch.equal(g, want), name
