"""/recommend gives items without interactions at most `serving.max_cold_share` of a list."""

from __future__ import annotations

import numpy as np

from shortlist.bundle.bundle import load_bundle
from shortlist.bundle.slots import Slots
from shortlist.serving.recommend import prepare, recommend
from shortlist.serving.schemas import RecommendRequest
from tests.serving.conftest import build_into_idle


def _cold_counts(sb, params, users, k):
    rng = np.random.default_rng(0)
    counts = []
    for u in users:
        served = recommend(sb, RecommendRequest(user_id=u, k=k), params, rng, now=1.8e9)
        rows = np.asarray([sb.row_of[i] for i in served.item_ids], dtype=np.int64)
        counts.append(int(sb.cold[rows].sum()))
    return np.asarray(counts)


def test_cold_items_take_a_bounded_share_of_each_list(world, tmp_path):
    root = str(tmp_path / "bundles")
    build_into_idle(world.params, root, world.model_a, world.data_dir)
    Slots(root).promote()
    sb = prepare(load_bundle(Slots(root).slot_location("live")), root)
    # The 20 items nobody interacted with (and any first seen after the towers' cut).
    never = {f"i{j}" for j in range(280, 300)}
    assert never <= {i for i, c in zip(sb.bundle.item_ids, sb.cold, strict=True) if c}

    users = [f"u{u}" for u in range(150)]
    k = 100  # deep lists: the cold items' content scores put them in the lower half
    free = _cold_counts(sb, world.params.with_overrides({"serving.max_cold_share": 1.0}), users, k)
    capped = _cold_counts(
        sb, world.params.with_overrides({"serving.max_cold_share": 0.02}), users, k
    )
    none = _cold_counts(sb, world.params.with_overrides({"serving.max_cold_share": 0.0}), users, k)
    assert free.max() > 2  # unbounded, content puts more than 2 cold items in some lists
    assert capped.max() <= 2 and (capped == np.minimum(free, 2)).all()  # 2% of 100 slots
    assert none.max() == 0
