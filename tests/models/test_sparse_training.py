"""Sparse embedding tables, the lazily caught-up weight average and the batch prefetcher.

The sparse path must touch only the rows a batch used and take, on those rows, the step
dense Adam takes where the math is the same (the first step, weight decay 0); the lazy
average must equal the dense per-step average; prefetching must change nothing but when
a batch is assembled.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shortlist.models.fit import fit_towers
from shortlist.models.logq import StreamingFrequencyEstimator
from shortlist.models.objective import (
    SPARSE_TABLES,
    TableOptimizer,
    WeightAverage,
    apply_step,
    make_optimizer,
    prefetch,
    prepare_batch,
    resolve_sparse,
)
from tests.models.conftest import make_batch, make_net
from tests.models.test_two_tower import tiny_data


def test_resolve_sparse(tiny_params):
    tp = tiny_params.towers
    assert tp.sparse_embeddings == "auto"  # small catalogs keep dense tables
    assert not resolve_sparse(tp, tp.sparse_min_items - 1)
    assert resolve_sparse(tp, tp.sparse_min_items)
    assert not resolve_sparse(tp, 10**7, distributed=True)  # DDP keeps dense tables
    on = tp.model_copy(update={"sparse_embeddings": "on"})
    off = tp.model_copy(update={"sparse_embeddings": "off"})
    assert resolve_sparse(on, 10) and not resolve_sparse(off, 10**7)
    # A bare on/off in params.yaml is a YAML boolean: it means the same.
    assert tp.model_validate({"sparse_embeddings": True}).sparse_embeddings == "on"
    assert tp.model_validate({"sparse_embeddings": False}).sparse_embeddings == "off"


def test_sparse_step_updates_only_touched_rows_like_dense_adam(setup):
    """One step from the same weights and batch: on the touched rows RowAdam moves the
    tables as AdamW (weight decay 0) does; every other row stays as it was (dense Adam
    moves none of them either on a first step, whose gradient there is 0). The gradients
    are summed in another order (one row per distinct row), hence the tolerance."""
    tp, _, _, examples, feats = setup
    assert tp.weight_decay == 0
    rows = np.arange(64)
    dense, sparse = make_net(setup, False), make_net(setup, True)
    opt_dense, opt_sparse = make_optimizer(dense, tp), make_optimizer(sparse, tp)
    assert isinstance(opt_sparse, TableOptimizer)
    assert isinstance(opt_dense, torch.optim.AdamW)
    before = {k: v.clone() for k, v in sparse.state_dict().items()}
    loss_d = apply_step(dense, opt_dense, make_batch(setup, rows), feats, tp)
    loss_s = apply_step(sparse, opt_sparse, make_batch(setup, rows), feats, tp)
    assert loss_d == pytest.approx(loss_s, rel=1e-6)
    prepared = make_batch(setup, rows)
    for name in SPARSE_TABLES:
        w0 = before[f"{name}.weight"]
        ws, wd = getattr(sparse, name).weight.detach(), getattr(dense, name).weight.detach()
        changed = (ws != w0).any(1)
        assert changed.any()
        assert 0 < int(changed.sum()) < len(w0)  # a few rows, never the whole table
        # The rows that moved are rows the batch used.
        used = {
            "item_id": prepared[0]["candidates_in"],
            "history_item": prepared[0]["history"].flatten(),
            "user_id": prepared[0]["user_idx"],
            "title": prepared[0]["candidate_title"].flatten(),
        }[name]
        assert set(torch.nonzero(changed).flatten().tolist()) <= set(used.tolist())
        torch.testing.assert_close(ws, wd, rtol=1e-5, atol=1e-6)
    for name, p in sparse.named_parameters():  # the rest: the same AdamW step
        torch.testing.assert_close(p, dict(dense.named_parameters())[name], rtol=1e-5, atol=1e-6)


def test_lazy_weight_average_equals_the_dense_average(setup):
    """With sparse tables the average catches rows up only when they change; after a
    flush it equals averaging every row after every step."""
    tp, _, _, examples, feats = setup
    net = make_net(setup, True)
    opt = make_optimizer(net, tp)
    lazy = WeightAverage(net, 0.9)
    assert lazy.tables == list(SPARSE_TABLES)
    reference = WeightAverage(net, 0.9)
    reference.tables = []
    reference._dense = (list(reference.net.parameters()), list(net.parameters()))
    # the plain average over every parameter
    perm = np.random.default_rng(1).permutation(len(examples))
    for k in range(12):
        apply_step(net, opt, make_batch(setup, perm[k * 32 : (k + 1) * 32], k), feats, tp, ema=lazy)
        reference.update(net)
    lazy.flush(net)
    for (name, a), b in zip(
        lazy.net.state_dict().items(), reference.net.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_what_sparse_training_reads_at_random_rows_is_placed_in_huge_pages(setup, monkeypatch):
    """The tables, the genre lookup, the average's tables and its row clocks, and
    RowAdam's moments all go through the huge-page placement (`huge_pages`); dense
    tables do not."""
    import shortlist.models.huge_pages as huge_pages
    import shortlist.models.objective as objective
    import shortlist.models.row_adam as row_adam

    placed = []

    def record(fn):
        def wrapper(*args, **kwargs):
            out = fn(*args, **kwargs)
            placed.append(out)
            return out

        return wrapper

    monkeypatch.setattr(objective, "to_huge_pages", record(huge_pages.to_huge_pages))
    monkeypatch.setattr(objective, "zeros_in_huge_pages", record(huge_pages.zeros_in_huge_pages))
    monkeypatch.setattr(row_adam, "zeros_in_huge_pages", record(huge_pages.zeros_in_huge_pages))
    tp, _, _, examples, feats = setup
    net = make_net(setup, True)
    opt = make_optimizer(net, tp)
    ema = WeightAverage(net, 0.9)
    apply_step(net, opt, make_batch(setup, np.arange(32)), feats, tp, ema=ema)

    def placed_(t):
        return any(t.untyped_storage().data_ptr() == p.untyped_storage().data_ptr() for p in placed)

    for name in SPARSE_TABLES:
        weight = getattr(net, name).weight
        assert placed_(weight) and placed_(getattr(ema.net, name).weight), name
        assert placed_(ema._synced[name]), name
        state = opt.sparse.state[weight]
        assert placed_(state["exp_avg"]) and placed_(state["exp_avg_sq"]), name
    assert placed_(net.genre_table)
    dense = make_net(setup, False)
    assert not any(placed_(getattr(dense, name).weight) for name in SPARSE_TABLES)


def test_prefetch_yields_the_plain_loops_batches_in_order(setup):
    """The prefetcher assembles in its thread, ahead, from the same random stream and
    estimator: the batches, their log Q and the estimator afterwards are the plain loop's."""
    tp, _, _, examples, feats = setup
    perm = np.random.default_rng(2).permutation(len(examples))
    schedule = [(perm[s : s + 40], s) for s in range(0, 400, 40)]

    def run(depth: int):
        est = StreamingFrequencyEstimator(4096, tp.logq.alpha)
        rng = np.random.default_rng(3)

        def fn(item):
            rows, at = item
            return prepare_batch(examples, rows, feats, est, at, tp, rng)

        return list(prefetch(schedule, fn, depth)), est, rng.random()

    plain, est0, next0 = run(0)
    ahead, est2, next2 = run(2)
    assert len(plain) == len(ahead) == len(schedule)
    for (b0, q0), (b2, q2) in zip(plain, ahead, strict=True):
        assert b0.keys() == b2.keys()
        for k in b0:
            torch.testing.assert_close(b0[k], b2[k], rtol=0, atol=0)
        torch.testing.assert_close(q0, q2, rtol=0, atol=0)
    np.testing.assert_array_equal(est0.gap, est2.gap)
    assert next0 == next2  # the stream is where the plain loop leaves it


def test_prefetch_raises_where_it_failed_and_stops_when_left():
    def fn(x):
        if x == 3:
            raise ValueError("bad item")
        return x * 2

    got = []
    with pytest.raises(ValueError, match="bad item"):
        for v in prefetch(range(10), fn, 2):
            got.append(v)
    assert got == [0, 2, 4]
    calls = []
    gen = prefetch(range(1000), lambda x: calls.append(x) or x, 2)
    assert next(gen) == 0
    gen.close()  # leaving the loop early ends the thread
    assert len(calls) < 10


@pytest.mark.parametrize("sparse", ["off", "on"])
def test_prefetch_trains_the_same_weights(tiny_params, sparse):
    """fit_towers with batches assembled ahead trains bit-identical weights to the
    inline loop, on dense and on sparse tables."""
    train, validation, items, users = tiny_data()
    weights = []
    for depth in (0, 2):
        tp = tiny_params.towers.model_copy(
            update={
                "prefetch_batches": depth,
                "sparse_embeddings": sparse,
                "history_mode": "causal",
            }
        )
        fitted, _, _ = fit_towers(tp, train, items, users, 0, 2, None, False, "t")
        assert all(getattr(fitted.net, n).sparse == (sparse == "on") for n in SPARSE_TABLES)
        weights.append(fitted.net.state_dict())
    for k, v in weights[0].items():
        torch.testing.assert_close(v, weights[1][k], rtol=0, atol=0, msg=k)


def test_history_bags_pool_like_the_dense_window(setup):
    """Pooling over the distinct filled items (the sparse tables' path) gives the dense
    window's query vectors and gradients, empty histories included; the history table's
    gradient names each distinct item once."""
    from shortlist.models.two_tower import history_bags

    tp, _, _, examples, _ = setup
    rows = np.arange(48)
    prepared = make_batch(setup, rows)[0]
    history = prepared["history"].clone()
    history[0] = 0  # a user with no history: an empty bag
    args = (prepared["user_idx"], prepared["user_feats"], history, prepared["context"])
    out = []
    for bags in (None, history_bags(history)):
        net = make_net(setup, bags is not None)
        q = net.query_forward(*args, bags)
        (q * torch.linspace(-1, 1, q.shape[1])).sum().backward()
        grad = net.history_item.weight.grad
        out.append((q.detach(), grad.to_dense(), net.recency.grad.clone(), grad))
    (q_dense, g_dense, r_dense, _), (q_bags, g_bags, r_bags, sparse) = out
    torch.testing.assert_close(q_bags, q_dense, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_bags, g_dense, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r_bags, r_dense, rtol=1e-5, atol=1e-6)
    distinct = torch.unique(history[history > 0])
    assert torch.equal(sparse._indices()[0], distinct)  # one gradient row per item


def test_accidental_hits_are_the_off_diagonal_matches():
    """The hits found by sorting are exactly the (example, candidate) pairs where the
    candidate is the example's item, except the example's own positive."""
    from shortlist.models.examples import accidental_hits

    rng = np.random.default_rng(0)
    for b, n_cand, n_items in [(64, 100, 20), (256, 400, 300), (5, 5, 2), (3, 10, 1000)]:
        pos = rng.integers(1, n_items, b)
        cand = np.concatenate([pos, rng.integers(1, n_items, n_cand - b)])
        mask = pos[:, None] == cand[None, :]
        mask[:, :b] &= ~np.eye(b, dtype=bool)
        assert np.array_equal(np.sort(accidental_hits(pos, cand)), np.flatnonzero(mask))


def test_the_prefetch_thread_leaves_the_callers_threads_alone():
    """The assembling thread runs its torch work on one intra-op thread; the caller's
    setting is its own and stays."""
    before = torch.get_num_threads()
    seen = list(prefetch(range(3), lambda _: torch.get_num_threads(), 2))
    assert seen == [1, 1, 1]
    assert torch.get_num_threads() == before


def test_the_prefetch_thread_runs_at_the_lowest_priority():
    """The assembling thread yields the cores to the step's threads (nice 19, Linux);
    the caller's priority stays."""
    import os
    import threading

    from shortlist.models.objective import PREFETCH_NICE

    def nice(_):
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = nice(None)
    assert list(prefetch(range(2), nice, 2)) == [PREFETCH_NICE] * 2
    assert nice(None) == before
