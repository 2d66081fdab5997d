"""The bandit's lists in the serving API: which bandit serves (`bandit_from_params`), what
it learned before a restart (`replay_bandit`), a list from it while no bundle is live
(`from_bandit`), and its draw in the cold section of a bundle's list
(`with_cold_section`). The bandit itself is `shortlist.serving.bandit`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from shortlist.config import Params
from shortlist.ranking.cold_share import cold_slots
from shortlist.serving import bandit as bandit_mod
from shortlist.serving.recommend import Served
from shortlist.storage import is_remote

log = logging.getLogger(__name__)


def bandit_from_params(params: Params) -> bandit_mod.ThompsonBandit | None:
    """The bandit that serves /recommend while no bundle is live (None when it is off or
    there is no catalog to serve)."""
    b = params.serving.bandit
    if not b.enabled:
        return None
    directory = b.catalog_dir or params.data.dir
    if is_remote(directory):
        log.warning("serving.bandit: %s is remote; no bandit (a local catalog is read)", directory)
        return None
    try:
        return bandit_mod.ThompsonBandit.from_catalog(
            directory,
            prior_strength=b.prior_strength,
            base_rate=b.base_rate,
            pool=b.pool,
            draws=b.draws,
            max_tracked_lists=params.feedback.max_tracked_lists,
        )
    except Exception:  # noqa: BLE001 - serving starts; without a bundle it answers 503
        log.exception("serving.bandit: could not read the catalog in %s", directory)
        return None


def replay_bandit(
    bandit: bandit_mod.ThompsonBandit, params: Params, impressions_dir: str, events_dir_: str
) -> None:
    """Rebuild the posterior from what the bandit showed before (the lists it served,
    named `bandit`, and its cold-section draws in bundles' lists, `bandit_draw`) and the
    events on them, so a restart keeps what it learned."""
    try:
        endpoint = params.storage.s3_endpoint_url
        columns = ["request_id", "item_id", "bundle_id", "bandit_draw"]
        shown = read_log(impressions_dir, "impressions", columns, endpoint)
        drawn = shown["bandit_draw"].fillna(False).astype(bool)
        shown = shown[(shown["bundle_id"] == bandit_mod.BUNDLE_ID) | drawn]
        if len(shown):
            columns = ["request_id", "item_id", "kind", "value"]
            events = read_log(events_dir_, "events", columns, endpoint)
            events = events[events["request_id"].isin(set(shown["request_id"]))]
            credited = bandit.replay(shown, events)
            log.info("bandit: %d shown items and %d successes replayed", len(shown), credited)
    except Exception:  # noqa: BLE001 - it serves from its priors instead
        log.exception("bandit: could not replay its logged lists; serving from the priors")


def read_log(directory: str, prefix: str, columns: list[str], endpoint: str | None):
    """Every row of a log directory's Parquet files (named `<prefix>-...`), these columns
    (null where a file predates a column)."""
    import io

    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shortlist.storage import open_store

    store = open_store(directory, endpoint_url=endpoint)
    keys = [k for k in store.list() if "/" not in k and k.startswith(prefix + "-")]
    tables = []
    for key in keys:
        if not key.endswith(".parquet"):
            continue
        file = pq.ParquetFile(io.BytesIO(store.read_bytes(key)))
        table = file.read(columns=[c for c in columns if c in file.schema_arrow.names])
        for c in columns:
            if c not in table.column_names:
                table = table.append_column(c, pa.nulls(len(table)))
        tables.append(table.select(columns))
    if not tables:
        return pd.DataFrame({c: [] for c in columns})
    return pa.concat_tables(tables, promote_options="default").to_pandas()


def with_cold_section(
    bandit: bandit_mod.ThompsonBandit,
    sb: Any,
    served: Served,
    request_id: str,
    req: Any,
    params: Params,
    sections: dict[str, np.ndarray],
) -> Served:
    """The list with its deepest exploration slot showing a Thompson draw over the live
    bundle's items without interactions (`shortlist.serving.bandit`), when the list has an
    exploration slot and its cold share has room for one more cold item; else unchanged.

    That position's propensity is the bandit's Monte Carlo estimate, its score and
    retrieval score the item's posterior mean; the list's expected cost stays the slot
    policy's (the item the slot would have drawn is not the one shown)."""
    if sb.cold is None or served.explored is None or not served.explored.any():
        return served
    pos = int(np.flatnonzero(served.explored)[-1])
    rows = np.asarray(served.rows, dtype=np.int64)
    others = np.delete(rows, pos)
    room = cold_slots(req.k, params.serving.max_cold_share) - int(sb.cold[others].sum())
    if room < 1:
        return served
    section = sections.get(sb.bundle_id)
    if section is None:
        cold_ids = np.asarray(sb.bundle.item_ids)[sb.cold]
        section = sections.setdefault(sb.bundle_id, bandit.section(cold_ids))
    exclude = set(served.item_ids) | set(req.exclude_items or ())
    if req.exclude_seen:  # (cold items have no interactions: no user has seen one yet)
        exclude |= set(req.recent_items or ())
    genres = set(req.genres) if req.genres else None
    got = bandit.recommend(request_id, 1, np.random.default_rng(), exclude, genres, section)
    if not got.item_ids or got.item_ids[0] not in sb.row_of:
        return served
    item = got.item_ids[0]
    item_ids = list(served.item_ids)
    item_ids[pos] = item
    rows = rows.copy()
    rows[pos] = sb.row_of[item]
    scores = np.asarray(served.scores, dtype=np.float64).copy()
    scores[pos] = got.means[0]
    retrieval = None
    if served.retrieval_scores is not None:
        retrieval = np.asarray(served.retrieval_scores, dtype=np.float64).copy()
        retrieval[pos] = got.means[0]
    prop = np.asarray(served.propensities, dtype=np.float64).copy()
    prop[pos] = got.propensities[0]
    return Served(
        served.strategy,
        served.policy,
        rows,
        scores,
        retrieval,
        prop,
        item_ids,
        served.explored,
        served.exploration_cost,
        bandit_position=pos,
    )


def from_bandit(bandit: bandit_mod.ThompsonBandit, request_id: str, req) -> Served:
    """One list from the bandit: the request's excluded and recent items are left out, and
    its genre filter applies as for a bundle."""
    exclude = set(req.exclude_items or ())
    if req.exclude_seen:
        exclude |= set(req.recent_items or ())
    genres = set(req.genres) if req.genres else None
    got = bandit.recommend(request_id, req.k, np.random.default_rng(), exclude, genres)
    n = len(got.item_ids)
    return Served(
        "bandit",
        bandit_mod.POLICY,
        got.rows,
        got.means,
        None,
        got.propensities,
        got.item_ids,
        np.zeros(n, dtype=bool),
        0.0,
    )
