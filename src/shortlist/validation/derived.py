"""Statistics Great Expectations cannot express directly, as small frames it can check.

Referential integrity, the share of new items/users and the interactions-per-user
quantiles are computed here with pandas; the suites then put an ordinary GX expectation
on a column of the derived frame, so every check shows up in the GX results and Data
Docs the same way. Each function returns None when its input columns are missing (the
schema suite already reports that).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from shortlist.data import schema


def _has(df: pd.DataFrame | None, *columns: str) -> bool:
    return df is not None and all(c in df.columns for c in columns)


def references(
    interactions: pd.DataFrame | None, items: pd.DataFrame | None, users: pd.DataFrame | None
) -> pd.DataFrame | None:
    """Per interaction (same index): does its item exist in items, its user in users?"""
    if not (
        _has(interactions, schema.USER_ID, schema.ITEM_ID)
        and _has(items, schema.ITEM_ID)
        and _has(users, schema.USER_ID)
    ):
        return None
    return pd.DataFrame(
        {
            schema.ITEM_ID: interactions[schema.ITEM_ID],
            schema.USER_ID: interactions[schema.USER_ID],
            "item_exists": interactions[schema.ITEM_ID].isin(items[schema.ITEM_ID]),
            "user_exists": interactions[schema.USER_ID].isin(users[schema.USER_ID]),
        },
        index=interactions.index,
    )


def _known_ids(column: str, *frames: pd.DataFrame | None) -> pd.Index:
    parts = [f[column].dropna().unique() for f in frames if _has(f, column)]
    if not parts:
        return pd.Index([])
    return pd.Index(np.concatenate(parts)).unique()


def new_shares(
    interactions: pd.DataFrame | None,
    reference_interactions: pd.DataFrame | None,
    reference_items: pd.DataFrame | None,
    reference_users: pd.DataFrame | None,
) -> pd.DataFrame | None:
    """One row: share of interactions whose item (user) the reference never saw."""
    if not _has(interactions, schema.USER_ID, schema.ITEM_ID):
        return None
    known_items = _known_ids(schema.ITEM_ID, reference_items, reference_interactions)
    known_users = _known_ids(schema.USER_ID, reference_users, reference_interactions)
    new_item = ~interactions[schema.ITEM_ID].isin(known_items)
    new_user = ~interactions[schema.USER_ID].isin(known_users)
    n = len(interactions)
    return pd.DataFrame(
        {
            "interactions": [n],
            "new_item_share": [float(new_item.mean()) if n else 0.0],
            "new_items": [int(interactions.loc[new_item, schema.ITEM_ID].nunique())],
            "new_user_share": [float(new_user.mean()) if n else 0.0],
            "new_users": [int(interactions.loc[new_user, schema.USER_ID].nunique())],
        }
    )


def fold_change(observed: float, reference: float) -> float:
    """max(o/r, r/o) - 1: 0 when equal, 1.0 when doubled or halved; symmetric in o and r."""
    if observed == reference:
        return 0.0
    if observed <= 0 or reference <= 0 or np.isnan(observed) or np.isnan(reference):
        return float("inf")
    return float(max(observed / reference, reference / observed) - 1.0)


def per_user_quantiles(
    interactions: pd.DataFrame | None,
    reference_interactions: pd.DataFrame | None,
    quantiles: list[float],
) -> pd.DataFrame | None:
    """Quantiles of interactions per user, batch vs reference, with their fold change."""
    if not (_has(interactions, schema.USER_ID) and _has(reference_interactions, schema.USER_ID)):
        return None
    observed = interactions.groupby(schema.USER_ID, dropna=True).size()
    reference = reference_interactions.groupby(schema.USER_ID, dropna=True).size()
    rows = []
    for q in quantiles:
        o = float(observed.quantile(q)) if len(observed) else float("nan")
        r = float(reference.quantile(q)) if len(reference) else float("nan")
        rows.append(
            {"quantile": q, "reference": r, "observed": o, "fold_change": fold_change(o, r)}
        )
    return pd.DataFrame(rows)


def title_share(items: pd.DataFrame | None) -> pd.DataFrame | None:
    """One row: items, items with a non-blank title, and their share (0 for no items).

    GX's own per-value checks leave nulls out of their denominator, so an all-null title
    column would pass them; this counts nulls and blanks alike as untitled."""
    if not _has(items, "title"):
        return None
    titles = items["title"]
    titled = titles.map(lambda t: isinstance(t, str) and bool(t.strip()))
    n = len(items)
    return pd.DataFrame(
        {
            "items": [n],
            "titled_items": [int(titled.sum())],
            "titled_share": [float(titled.mean()) if n else 0.0],
        }
    )
