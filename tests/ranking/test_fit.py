"""The ranker's hand-written Adam takes torch.optim.Adam's steps; selecting requests from
featurised rows keeps each request's rows together."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shortlist.ranking.featurize import RankerRows
from shortlist.ranking.fit import Adam
from shortlist.ranking.model import DCNRanker, weighted_logistic_loss


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adam_takes_the_steps_of_torch_optim_adam(weight_decay):
    # float64 and no dropout: the two optimisers order their arithmetic differently, so
    # what is left of any difference is rounding.
    torch.manual_seed(0)
    ours = DCNRanker(5, 4, 6, id_dim=3, cross_layers=2, hidden_dims=[8], dropout=0.0).double()
    ref = DCNRanker.from_config(ours.config).double()
    ref.load_state_dict(ours.state_dict())
    start = {k: v.clone() for k, v in ours.state_dict().items()}
    opt = Adam(ours.parameters(), lr=0.01, weight_decay=weight_decay)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.01, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(1)
    for step in range(30):
        d = torch.randn(16, 5, generator=gen, dtype=torch.float64)
        # A varying subset of users per batch: rows of the embedding with a zero gradient.
        u = torch.randint(0, 2 if step % 2 else 5, (16,), generator=gen)
        i = torch.randint(0, 7, (16,), generator=gen)
        y = (torch.rand(16, generator=gen) < 0.3).double()
        w = 1 + 4 * y
        for model, o in ((ours, opt), (ref, ref_opt)):
            o.zero_grad()
            weighted_logistic_loss(model(d, u, i), y, w).backward()
            o.step()
    for (name, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
    assert all(not torch.equal(v, start[k]) for k, v in ours.state_dict().items())


def test_select_keeps_each_requests_rows_together():
    ex = RankerRows(
        dense=np.arange(6, dtype=np.float32)[:, None],
        user_idx=np.array([1, 1, 2, 3, 3, 3]),
        item_idx=np.arange(6),
        rows=np.arange(6),
        labels=np.array([1, 0, 1, 0, 1, 0], np.float32),
        weights=np.ones(6, np.float32),
        retrieval=np.linspace(1, 0, 6, dtype=np.float32),
        retrieved=np.ones(6, bool),
        offsets=np.array([0, 2, 3, 6]),
        n_relevant=np.array([1, 1, 2]),
        user_ids=["a", "b", "c"],
    )
    sub = ex.select(np.array([True, False, True]))
    assert sub.user_ids == ["a", "c"] and len(sub) == 2
    assert sub.offsets.tolist() == [0, 2, 5]
    assert sub.rows.tolist() == [0, 1, 3, 4, 5]
    assert sub.n_relevant.tolist() == [1, 2]
    assert sub.dense[sub.request(1)].ravel().tolist() == [3.0, 4.0, 5.0]
    empty = ex.select(np.zeros(3, bool))
    assert len(empty) == 0 and empty.offsets.tolist() == [0] and len(empty.rows) == 0
