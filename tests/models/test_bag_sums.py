"""Bag sums with their own backward pass: embedding_bag's values and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shortlist.models.bag_sums import bag_sums


def _grads(fn, rows, weights):
    rows = rows.detach().clone().requires_grad_()
    weights = None if weights is None else weights.detach().clone().requires_grad_()
    out = fn(rows, weights)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * upstream).sum().backward()
    return out.detach(), rows.grad, None if weights is None else weights.grad


@pytest.mark.parametrize("weighted", [False, True])
def test_bags_with_offsets_match_embedding_bag(weighted):
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(40, 6, generator=gen)
    inverse = torch.randint(0, 40, (300,), generator=gen)
    offsets = torch.tensor([0, 0, 10, 10, 10, 150, 299])  # empty bags, a bag of one
    weights = torch.rand(300, generator=gen) if weighted else None

    def want(r, w):
        return nn.functional.embedding_bag(inverse, r, offsets, mode="sum", per_sample_weights=w)

    def got(r, w):
        return bag_sums(r, inverse, offsets, w)

    expected, actual = _grads(want, rows, weights), _grads(got, rows, weights)
    assert torch.equal(actual[0], expected[0])  # the same forward kernel
    for a, e in zip(actual[1:], expected[1:], strict=True):
        if e is not None:
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    assert actual[1].abs().sum() > 0


def test_bag_of_given_or_found_from_offsets_is_the_same():
    gen = torch.Generator().manual_seed(2)
    rows = torch.randn(12, 3, generator=gen)
    inverse = torch.randint(0, 12, (20,), generator=gen)
    offsets = torch.tensor([0, 4, 4, 9])
    bag_of = torch.tensor([0] * 4 + [2] * 5 + [3] * 11)
    weights = torch.rand(20, generator=gen)
    a = _grads(lambda r, w: bag_sums(r, inverse, offsets, w), rows, weights)
    b = _grads(lambda r, w: bag_sums(r, inverse, offsets, w, bag_of=bag_of), rows, weights)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("weighted", [False, True])
def test_fixed_bags_with_padding_match_embedding_bag(weighted):
    """The title's bags: one per row of a 2-D index, row 0 padding (no value, no gradient)."""
    gen = torch.Generator().manual_seed(3)
    rows = torch.randn(25, 4, generator=gen)
    local = torch.randint(0, 25, (30, 8), generator=gen)
    local[:, 5:] = 0  # padded tails
    weights = torch.rand(30, 8, generator=gen) if weighted else None

    def want(r, w):
        return nn.functional.embedding_bag(
            local, r, mode="sum", per_sample_weights=w, padding_idx=0
        )

    def got(r, w):
        return bag_sums(r, local, weights=w, padding_row=0)

    expected, actual = _grads(want, rows, weights), _grads(got, rows, weights)
    assert torch.equal(actual[0], expected[0])
    torch.testing.assert_close(actual[1], expected[1], rtol=1e-5, atol=1e-6)
    assert torch.equal(actual[1][0], torch.zeros(4))
    if weighted:
        assert actual[2].shape == weights.shape
        torch.testing.assert_close(actual[2], expected[2], rtol=1e-5, atol=1e-6)
        assert torch.equal(actual[2][:, 5:], torch.zeros(30, 3))  # padded entries


def test_bags_need_offsets_or_a_fixed_size():
    with pytest.raises(ValueError, match="offsets"):
        bag_sums(torch.randn(3, 2), torch.tensor([0, 1, 2]))
