"""The expectation suites of the data contract, one target frame each.

A `Target` is a frame plus the GX expectations to run on it: the three tables, the
snapshot's file integrity, referential integrity, absolute rules (finite, bounded
weights; id length and whitespace; a minimum of users and of titled items), and (against a
reference) volume and drift. Thresholds come only from `params.validation`. Volume and
drift need a reference; without one they are left out and a note says so, which is why
the absolute rules hold for every batch: the first batch is checked by them alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from shortlist.data import schema
from shortlist.validation import derived
from shortlist.validation.batch import Batch

if TYPE_CHECKING:
    from shortlist.config import ValidationParams

# An id: no leading/trailing whitespace (so not blank) and no control characters.
ID_REGEX = r"^[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?\Z"

NO_REFERENCE_NOTE = (
    "no reference yet: volume and drift checks skipped (first batch); the absolute rules "
    "(weights, ids, validation.min_users, validation.min_title_share) still apply"
)


@dataclass
class Target:
    """One GX batch: `frame` is validated; `examples` (same index) shows failing rows."""

    name: str
    frame: pd.DataFrame
    expectations: list[Any]
    examples: pd.DataFrame | None = None


# dtype each contract column must have in pandas (ExpectColumnValuesToBeOfType's type_).
INTERACTION_TYPES = {
    schema.USER_ID: "str",
    schema.ITEM_ID: "str",
    schema.TIMESTAMP: "int64",
    schema.WEIGHT: "float32",
}


def _volume(gxe, table: str, reference: Batch | None, tolerance: float) -> list[Any]:
    ref = reference.table(table) if reference is not None else None
    if ref is None:
        return []
    n = len(ref)
    return [
        gxe.ExpectTableRowCountToBeBetween(
            min_value=int(math.floor(n * (1 - tolerance))) if tolerance < 1 else 0,
            max_value=int(math.ceil(n * (1 + tolerance))),
            description=f"row count within {tolerance:.0%} of the reference ({n} rows)",
        )
    ]


def _id_rules(gxe, column: str, max_length: int) -> list[Any]:
    """An id column's contract: 1..max_length characters, no outer whitespace or controls."""
    return [
        gxe.ExpectColumnValueLengthsToBeBetween(
            column=column,
            min_value=1,
            max_value=int(max_length),
            description=f"{column}: 1 to {max_length} characters (validation.max_id_length)",
        ),
        gxe.ExpectColumnValuesToMatchRegex(
            column=column,
            regex=ID_REGEX,
            description=f"{column}: no leading or trailing whitespace, no control characters",
        ),
    ]


def _key_table(gxe, key: str, required: dict[str, Any], max_id_length: int) -> list[Any]:
    out: list[Any] = [gxe.ExpectTableRowCountToBeBetween(min_value=1, description="not empty")]
    out += [gxe.ExpectColumnToExist(column=c) for c in required]
    out += [
        gxe.ExpectColumnValuesToBeOfType(column=key, type_="str"),
        gxe.ExpectColumnValuesToNotBeNull(column=key),
        gxe.ExpectColumnValuesToBeUnique(column=key, description=f"one row per {key}"),
    ]
    return out + _id_rules(gxe, key, max_id_length)


def build_targets(
    batch: Batch, reference: Batch | None, vp: ValidationParams, now: float
) -> tuple[list[Target], list[str]]:
    """All targets for `batch` (and notes on what was skipped and why)."""
    import great_expectations.expectations as gxe

    notes: list[str] = []
    targets = [
        Target(
            "snapshot",
            batch.files,
            [
                gxe.ExpectColumnValuesToBeInSet(column=c, value_set=[True])
                for c in ("present", "readable", "checksum_matches_manifest", "rows_match_manifest")
            ],
            batch.files,
        )
    ]
    notes += batch.problems

    inter = batch.table("interactions")
    items = batch.table("items")
    users = batch.table("users")

    if inter is not None:
        exp: list[Any] = [gxe.ExpectTableRowCountToBeBetween(min_value=1, description="not empty")]
        exp += [gxe.ExpectColumnToExist(column=c) for c in INTERACTION_TYPES]
        exp += [
            gxe.ExpectColumnValuesToBeOfType(column=c, type_=t)
            for c, t in INTERACTION_TYPES.items()
        ]
        exp += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in INTERACTION_TYPES]
        exp += [
            gxe.ExpectCompoundColumnsToBeUnique(
                column_list=[schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP],
                description="no duplicated (user, item, timestamp) rows",
            ),
            gxe.ExpectColumnValuesToBeBetween(
                column=schema.WEIGHT,
                min_value=0.0,
                max_value=float(vp.max_weight),
                description="finite, 0 to validation.max_weight",
            ),
            gxe.ExpectColumnUniqueValueCountToBeBetween(
                column=schema.USER_ID,
                min_value=int(vp.min_users),
                description="at least validation.min_users distinct users",
            ),
            gxe.ExpectColumnValuesToBeBetween(
                column=schema.TIMESTAMP,
                min_value=int(vp.min_timestamp),
                max_value=int(now) + int(vp.max_future_seconds),
                description="unix seconds, not before min_timestamp, not in the future",
            ),
        ]
        exp += _id_rules(gxe, schema.USER_ID, vp.max_id_length)
        exp += _id_rules(gxe, schema.ITEM_ID, vp.max_id_length)
        exp += _volume(gxe, "interactions", reference, vp.volume_tolerance)
        targets.append(Target("interactions", inter, exp, inter))
    if items is not None:
        exp = _key_table(gxe, schema.ITEM_ID, schema.ITEM_REQUIRED, vp.max_id_length)
        exp += _volume(gxe, "items", reference, vp.volume_tolerance)
        targets.append(Target("items", items, exp, items))
    if users is not None:
        exp = _key_table(gxe, schema.USER_ID, schema.USER_REQUIRED, vp.max_id_length)
        exp += _volume(gxe, "users", reference, vp.volume_tolerance)
        targets.append(Target("users", users, exp, users))

    refs = derived.references(inter, items, users)
    if refs is not None:
        targets.append(
            Target(
                "interactions_references",
                refs,
                [
                    gxe.ExpectColumnValuesToBeInSet(
                        column="item_exists",
                        value_set=[True],
                        description="every interaction's item exists in items",
                    ),
                    gxe.ExpectColumnValuesToBeInSet(
                        column="user_exists",
                        value_set=[True],
                        description="every interaction's user exists in users",
                    ),
                ],
                inter,
            )
        )
    elif inter is not None:
        notes.append("referential integrity not checked: a key column or table is missing")

    titles = derived.title_share(items)
    if titles is not None and batch.manifest.get("item_features") == "none":
        # Ids-only data (no items file): there are no titles to expect, by construction.
        notes.append("title share not checked: the batch came without an items file")
        titles = None
    if titles is not None:
        targets.append(
            Target(
                "items_titles",
                titles,
                [
                    gxe.ExpectColumnValuesToBeBetween(
                        column="titled_share",
                        min_value=float(vp.min_title_share),
                        max_value=1.0,
                        description="share of items with a non-blank title is at least "
                        "validation.min_title_share",
                    )
                ],
                titles,
            )
        )

    if reference is None:
        notes.append(NO_REFERENCE_NOTE)
        return targets, notes

    ref_inter = reference.table("interactions")
    shares = derived.new_shares(
        inter, ref_inter, reference.table("items"), reference.table("users")
    )
    if shares is not None:
        targets.append(
            Target(
                "interactions_drift",
                shares,
                [
                    gxe.ExpectColumnValuesToBeBetween(
                        column="new_item_share", min_value=0.0, max_value=vp.max_new_item_share
                    ),
                    gxe.ExpectColumnValuesToBeBetween(
                        column="new_user_share", min_value=0.0, max_value=vp.max_new_user_share
                    ),
                ],
                shares,
            )
        )
    quantiles = derived.per_user_quantiles(inter, ref_inter, list(vp.per_user_quantiles))
    if quantiles is not None:
        targets.append(
            Target(
                "interactions_per_user",
                quantiles,
                [
                    gxe.ExpectColumnValuesToBeBetween(
                        column="fold_change",
                        min_value=0.0,
                        max_value=vp.per_user_quantile_tolerance,
                        description="max(observed/reference, reference/observed) - 1 "
                        "per quantile of interactions per user",
                    )
                ],
                quantiles,
            )
        )
    if shares is None or quantiles is None:
        notes.append("drift not fully checked: user_id/item_id missing in batch or reference")
    return targets, notes
