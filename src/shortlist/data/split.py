"""Train/validation/test split that fits the data: by time where time is real, at random
where it is not, and never so small that the decisions drawn from it are noise.

Modes (params.split.mode):

- ``auto`` (`resolve_mode`): ``random`` when the snapshot's timestamps were synthesised
  (row order is not time); otherwise ``global`` when its validation part covers at least
  ``global_min_user_share`` of the users, else ``per_user``.
- ``global``: two timestamp cutoffs at quantiles of all interactions,
  ``train < t1 <= validation < t2 <= test``. The test period comes after training for
  everyone, as in production; users first seen late are cold users.
- ``per_user``: for each user with at least ``min_user_interactions`` interactions, the
  last ``test_fraction`` of their history by (timestamp, item_id) is test and the
  ``validation_fraction`` before it validation (each at least one interaction when its
  fraction is positive, and train always keeps at least one); users below the minimum
  keep everything in train.
- ``random``: as ``per_user``, but each user's validation and test interactions are drawn
  at random (seeded) instead of being the most recent. For data without real time the
  parts are then put in time order (train, validation, test: timestamps shifted per part,
  order within a part kept), so every consumer that reads time sees validation after train.

All are deterministic for a seed: ties in time are broken by item_id (per_user), and each part is
written sorted by (timestamp, user_id, item_id). Cold ids per part (no interaction in
train) are listed in a table with columns kind (item/user), id, part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from shortlist.data import schema
from shortlist.errors import ShortlistError

PARTS = ("train", "validation", "test")
COLD_SCHEMA = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),
        pa.field("id", pa.string(), nullable=False),
        pa.field("part", pa.string(), nullable=False),
    ]
)


@dataclass
class SplitResult:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    cutoffs: dict[str, int | None] = field(default_factory=dict)

    def parts(self) -> dict[str, pd.DataFrame]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


def _check_fractions(validation_fraction: float, test_fraction: float) -> None:
    for name, f in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise ShortlistError(f"split.{name} must be in [0, 1), got {f}")
    if validation_fraction + test_fraction >= 1.0:
        raise ShortlistError("split: validation_fraction + test_fraction must be below 1")


def _codes(values: pd.Series) -> np.ndarray:
    """Integer codes in lexical order of the ids (for fast, deterministic multi-key sorts)."""
    return pd.factorize(values, sort=True)[0]


def _materialise(interactions: pd.DataFrame, label: np.ndarray, cutoffs: dict) -> SplitResult:
    """Parts 0/1/2 -> train/validation/test, each sorted by (timestamp, user_id, item_id).

    One lexsort over integer codes instead of a string sort per part: cheap at 10M rows.
    """
    ts = interactions[schema.TIMESTAMP].to_numpy(dtype=np.int64)
    order = np.lexsort(
        (_codes(interactions[schema.ITEM_ID]), _codes(interactions[schema.USER_ID]), ts)
    )
    cols = [schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP, schema.WEIGHT]
    parts = [
        interactions[cols].take(order[label[order] == k]).reset_index(drop=True) for k in range(3)
    ]
    return SplitResult(*parts, cutoffs=cutoffs)


def global_cutoffs(
    timestamps: np.ndarray, validation_fraction: float, test_fraction: float
) -> tuple[int | None, int | None]:
    """(t1, t2): validation starts at t1, test at t2; None where the part is empty.

    t2 is the timestamp at the (1 - test_fraction) quantile (rank floor(n(1 - f))), so the
    test part holds about test_fraction of the rows (more when many rows tie at t2).
    """
    ts = np.sort(np.asarray(timestamps, dtype=np.int64))
    n = len(ts)
    if n == 0:
        return None, None

    def at(fraction_after: float) -> int | None:
        if fraction_after <= 0:
            return None
        idx = min(max(math.floor(n * (1.0 - fraction_after)), 0), n - 1)
        return int(ts[idx])

    t2 = at(test_fraction)
    t1 = at(validation_fraction + test_fraction) if validation_fraction > 0 else t2
    return t1, t2


def split_global(
    interactions: pd.DataFrame, validation_fraction: float, test_fraction: float
) -> SplitResult:
    _check_fractions(validation_fraction, test_fraction)
    ts = interactions[schema.TIMESTAMP].to_numpy(dtype=np.int64)
    t1, t2 = global_cutoffs(ts, validation_fraction, test_fraction)
    inf = np.iinfo(np.int64).max
    lo = inf if t1 is None else t1
    hi = inf if t2 is None else t2
    label = np.where(ts < lo, 0, np.where(ts >= hi, 2, 1)).astype(np.int8)
    cutoffs = {"validation_start": t1, "test_start": t2}
    return _materialise(interactions, label, cutoffs)


def per_user_counts(
    n: np.ndarray, validation_fraction: float, test_fraction: float, min_interactions: int
) -> tuple[np.ndarray, np.ndarray]:
    """(n_validation, n_test) per user with `n` interactions (see module doc)."""
    n = np.asarray(n, dtype=np.int64)
    eligible = n >= min_interactions

    def size(f: float, room: np.ndarray) -> np.ndarray:
        if f <= 0:
            return np.zeros_like(n)
        want = np.maximum(np.floor(n * f + 0.5).astype(np.int64), 1)
        return np.clip(np.minimum(want, room), 0, None)

    n_test = size(test_fraction, n - 1)  # train keeps at least one
    n_val = size(validation_fraction, n - 1 - n_test)
    return np.where(eligible, n_val, 0), np.where(eligible, n_test, 0)


def _label_user_tails(
    order: np.ndarray,
    user_codes: np.ndarray,
    validation_fraction: float,
    test_fraction: float,
    min_user_interactions: int,
) -> np.ndarray:
    """Part labels (0/1/2) when `order` lists each user's rows together: the last n_test
    rows of a user are test, the n_validation before them validation (`per_user_counts`)."""
    sorted_users = user_codes[order]
    counts = np.bincount(user_codes, minlength=int(user_codes.max()) + 1 if len(order) else 0)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(order)) - starts[sorted_users]  # position inside the user's rows
    n_val, n_test = per_user_counts(
        counts, validation_fraction, test_fraction, min_user_interactions
    )
    from_end = counts[sorted_users] - pos  # 1 for the user's last row
    test_sorted = from_end <= n_test[sorted_users]
    val_sorted = ~test_sorted & (from_end <= n_test[sorted_users] + n_val[sorted_users])
    label = np.zeros(len(order), dtype=np.int8)
    label[order[val_sorted]] = 1
    label[order[test_sorted]] = 2
    return label


def split_per_user(
    interactions: pd.DataFrame,
    validation_fraction: float,
    test_fraction: float,
    min_user_interactions: int,
) -> SplitResult:
    _check_fractions(validation_fraction, test_fraction)
    user_codes = _codes(interactions[schema.USER_ID])
    item_codes = _codes(interactions[schema.ITEM_ID])
    ts = interactions[schema.TIMESTAMP].to_numpy(dtype=np.int64)
    order = np.lexsort((item_codes, ts, user_codes))  # last key is primary
    label = _label_user_tails(
        order, user_codes, validation_fraction, test_fraction, min_user_interactions
    )
    return _materialise(interactions, label, {})


def split_random(
    interactions: pd.DataFrame,
    validation_fraction: float,
    test_fraction: float,
    min_user_interactions: int,
    seed: int,
) -> SplitResult:
    """Per user, a random share held out for validation and test (sizes as per_user).

    The parts are then ordered in time: validation's timestamps are shifted past train's
    last, test's past validation's last (within a part the original order stays).
    """
    _check_fractions(validation_fraction, test_fraction)
    user_codes = _codes(interactions[schema.USER_ID])
    item_codes = _codes(interactions[schema.ITEM_ID])
    ts = interactions[schema.TIMESTAMP].to_numpy(dtype=np.int64)
    # A seeded random key per row, drawn in a canonical row order so that the split does
    # not depend on how the input rows happen to be ordered.
    canonical = np.lexsort((item_codes, ts, user_codes))
    key = np.empty(len(interactions))
    key[canonical] = np.random.default_rng(seed).random(len(interactions))
    order = np.lexsort((key, user_codes))  # users together, random order inside
    label = _label_user_tails(
        order, user_codes, validation_fraction, test_fraction, min_user_interactions
    )
    span = int(ts.max() - ts.min() + 1) if len(ts) else 0
    shifted = interactions.assign(**{schema.TIMESTAMP: ts + label.astype(np.int64) * span})
    return _materialise(shifted, label, {"seed": int(seed)})


def temporal_split(
    interactions: pd.DataFrame,
    *,
    mode: str = "global",
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    min_user_interactions: int = 1,
    seed: int = 0,
) -> SplitResult:
    """Split interactions into train/validation/test (see module doc; `mode` resolved)."""
    if mode == "global":
        return split_global(interactions, validation_fraction, test_fraction)
    if mode == "per_user":
        return split_per_user(
            interactions, validation_fraction, test_fraction, min_user_interactions
        )
    if mode == "random":
        return split_random(
            interactions, validation_fraction, test_fraction, min_user_interactions, seed
        )
    raise ShortlistError(f"unknown split mode {mode!r} (global, per_user or random)")


def timestamps_are_real(snapshot: dict[str, Any]) -> bool:
    """False when the importer synthesised timestamps from row order (see csv_source)."""
    if "timestamps" in snapshot:
        return snapshot["timestamps"] == "real"
    return "synthetic_timestamps" not in snapshot


def resolve_mode(
    requested: str,
    interactions: pd.DataFrame,
    *,
    real_time: bool,
    validation_fraction: float,
    test_fraction: float,
    min_user_interactions: int,
    global_min_user_share: float,
) -> tuple[str, str]:
    """(mode, rule): the mode `auto` stands for on this data, and why, in one sentence."""
    if requested != "auto":
        return requested, f"split.mode={requested} set explicitly"
    if not real_time:
        return "random", (
            "timestamps were synthesised from row order, so time means nothing: "
            "a random per-user holdout"
        )
    users = interactions[schema.USER_ID]
    counts = users.value_counts()
    eligible = int((counts >= max(min_user_interactions, 2)).sum())
    ts = interactions[schema.TIMESTAMP].to_numpy(dtype=np.int64)
    t1, t2 = global_cutoffs(ts, validation_fraction, test_fraction)
    covered = 0
    if t1 is not None:
        in_val = (ts >= t1) & (ts < t2) if t2 is not None else ts >= t1
        covered = int(users[in_val].nunique())
    share = covered / eligible if eligible else 0.0
    if share >= global_min_user_share:
        return "global", (
            f"real timestamps; a global time cut puts {covered} of {eligible} users "
            f"({share:.0%} >= {global_min_user_share:.0%}) in validation"
        )
    return "per_user", (
        f"real timestamps; a global time cut would put only {covered} of {eligible} users "
        f"({share:.0%} < {global_min_user_share:.0%}) in validation, so each user's most "
        "recent interactions are held out instead"
    )


def check_sizes(summary_: dict[str, Any], *, min_users: int, fractions: dict[str, float]) -> None:
    """Raise when a part that decides something (validation, test) has too few users."""
    problems = []
    for part in ("validation", "test"):
        if fractions.get(part, 0.0) <= 0:
            continue
        info = summary_["parts"][part]
        cold = summary_["cold"][part]["users"]
        warm = info["users"] - cold
        if warm < min_users:
            problems.append(
                f"{part} has {info['users']} users ({cold} of them cold, {warm} with history) "
                f"and {info['rows']} interactions; at least {min_users} users with history "
                "are needed"
            )
    if problems:
        raise ShortlistError(
            "split too small to decide on: "
            + "; ".join(problems)
            + " (more data, larger split fractions, split.mode=per_user, or a lower "
            "split.min_validation_users)"
        )


def cold_ids(result: SplitResult) -> pd.DataFrame:
    """Items and users of validation/test with no train interaction (kind, id, part)."""
    rows: list[pd.DataFrame] = []
    for kind, col in (("item", schema.ITEM_ID), ("user", schema.USER_ID)):
        seen = pd.Index(result.train[col].unique())
        for part in ("validation", "test"):
            ids = pd.Index(getattr(result, part)[col].unique())
            cold = np.sort(ids.difference(seen).to_numpy(dtype=str))
            rows.append(pd.DataFrame({"kind": kind, "id": cold, "part": part}))
    out = pd.concat(rows, ignore_index=True)
    return out.astype({"kind": str, "id": str, "part": str})


def summary(result: SplitResult, cold: pd.DataFrame) -> dict[str, Any]:
    """What split.json reports about the parts.

    ``counts``: rows per part (train, validation, test) plus the distinct users and items
    over all parts; ``parts``: rows, users, items and time range of each part; ``cold``:
    how many items and users of validation/test have no train interaction.
    """
    parts = result.parts()
    uniques = {
        name: (pd.Index(df[schema.USER_ID].unique()), pd.Index(df[schema.ITEM_ID].unique()))
        for name, df in parts.items()
    }
    per_part = {
        name: {
            "rows": len(df),
            "users": len(uniques[name][0]),
            "items": len(uniques[name][1]),
            "time_range": [int(df[schema.TIMESTAMP].min()), int(df[schema.TIMESTAMP].max())]
            if len(df)
            else None,
        }
        for name, df in parts.items()
    }
    all_users = uniques["train"][0].union(uniques["validation"][0]).union(uniques["test"][0])
    all_items = uniques["train"][1].union(uniques["validation"][1]).union(uniques["test"][1])
    counts = {name: len(df) for name, df in parts.items()}
    counts.update({"users": len(all_users), "items": len(all_items)})
    cold_counts = {
        part: {
            f"{kind}s": int(((cold["kind"] == kind) & (cold["part"] == part)).sum())
            for kind in ("item", "user")
        }
        for part in ("validation", "test")
    }
    return {"counts": counts, "parts": per_part, "cold": cold_counts}


def tracking_record(manifest: dict[str, Any]) -> tuple[dict[str, str], dict[str, float]]:
    """(params, metrics) of a split manifest for an MLflow run: mode, rule, sizes, shares."""
    params = {
        "split.mode": str(manifest.get("mode")),
        "split.requested_mode": str(manifest.get("requested_mode", manifest.get("mode"))),
        "split.timestamps": str(manifest.get("timestamps", "real")),
        "split.rule": str(manifest.get("rule", ""))[:500],
    }
    metrics: dict[str, float] = {}
    for part, info in manifest.get("parts", {}).items():
        metrics[f"split.{part}_rows"] = float(info["rows"])
        metrics[f"split.{part}_users"] = float(info["users"])
    for part, shares in manifest.get("shares", {}).items():
        metrics.update({f"split.{part}_{k}_share": float(v) for k, v in shares.items()})
    return params, metrics
