"""The generic importer: interactions (and optional items/users) from CSV or Parquet files.

Interactions need columns user_id, item_id and optionally weight and timestamp (unix
seconds, or ISO 8601 date-times). Without timestamp the file's row order is taken as the time order and turned
into synthetic, strictly increasing timestamps (recorded in the snapshot's extra so no
one mistakes them for real times); without weight every row weighs 1.0.

Items and users files hold an id column plus feature columns. Multi-valued text columns
use '|' between values: ``genres`` and ``tags`` are always lists, and any other text
column (except ``title``) whose values contain '|' becomes a list as well. `column_map` maps contract
names to source names (``{"user_id": "uid"}``), for all three files.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shortlist.data import schema
from shortlist.errors import ShortlistError

# First synthetic timestamp when the source has none: 2020-01-01T00:00:00Z, one second apart.
SYNTHETIC_T0 = 1_577_836_800
MULTI_SEP = "|"
_PARQUET_SUFFIXES = (".parquet", ".pq")


def _read_bytes(path: str) -> bytes:
    if path.startswith("s3://"):
        from shortlist.storage import open_store

        parent, _, key = path.rpartition("/")
        return open_store(parent).read_bytes(key)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return p.read_bytes()


def read_frame(path: str | Path, id_columns: list[str]) -> pd.DataFrame:
    """A CSV (header row) or Parquet file as a DataFrame; id columns read as text."""
    text = str(path)
    data = _read_bytes(text)
    if text.lower().endswith(_PARQUET_SUFFIXES):
        df = pd.read_parquet(io.BytesIO(data))
        for col in id_columns:
            if col in df.columns:
                df[col] = df[col].astype(str)
        return df
    header = pd.read_csv(io.BytesIO(data), nrows=0).columns
    dtypes = {c: str for c in id_columns if c in header}
    return pd.read_csv(io.BytesIO(data), dtype=dtypes, keep_default_na=True)


def _renamer(column_map: dict[str, str] | None, df: pd.DataFrame) -> dict[str, str]:
    """source name -> contract name, for the mapped columns present in this file."""
    rename = {}
    for contract, source in (column_map or {}).items():
        if source in df.columns:
            rename[source] = contract
    return rename


def _source_name(column_map: dict[str, str] | None, contract: str) -> str:
    return (column_map or {}).get(contract, contract)


def _split_multi(values: pd.Series) -> list[list[str]]:
    return [[v for v in str(x).split(MULTI_SEP) if v] if isinstance(x, str) else [] for x in values]


def _features(df: pd.DataFrame, id_col: str, text_required: dict[str, Any]) -> pd.DataFrame:
    """Normalise a feature table: id as text, lists for '|' columns, numerics as float64."""
    out = pd.DataFrame({id_col: df[id_col].astype(str)})
    for col in df.columns:
        if col == id_col:
            continue
        s = df[col]
        if col == "genres" or col == "tags":
            out[col] = _split_multi(s)
        elif pd.api.types.is_bool_dtype(s):
            out[col] = s
        elif pd.api.types.is_numeric_dtype(s):
            out[col] = s.astype("float64")
        elif col != "title" and s.astype(str).str.contains(MULTI_SEP, regex=False).any():
            out[col] = _split_multi(s)
        else:
            out[col] = s.astype("string").astype(object).where(s.notna(), None)
    for col, default in text_required.items():
        if col not in out.columns:
            out[col] = [default() for _ in range(len(out))]
    if out[id_col].duplicated().any():
        dup = out.loc[out[id_col].duplicated(), id_col].iloc[0]
        raise ShortlistError(f"duplicate {id_col} {dup!r} in the features file")
    return out


def _unix_seconds(values: pd.Series, where: str) -> pd.Series:
    """Unix seconds from numbers, or from date-time text (ISO 8601; UTC unless it says)."""
    if values.isna().any():
        raise ShortlistError(f"{where}: timestamp has {int(values.isna().sum())} empty value(s)")
    try:
        return pd.to_numeric(values, errors="raise").astype("int64")
    except (ValueError, TypeError):
        pass
    try:
        when = pd.to_datetime(values, utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        msg = f"{where}: timestamp is neither unix seconds nor a date: {exc}"
        raise ShortlistError(msg) from None
    return ((when - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).astype("int64")


def load_csv(
    path: str | Path,
    items_path: str | Path | None = None,
    users_path: str | Path | None = None,
    column_map: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """(interactions, items, users, extra) from generic files; extra goes to the snapshot.

    Without an items (users) file the table lists the distinct ids seen in interactions
    (items get an empty title and no genres), so the contract's tables always exist.
    """
    column_map = {k: v for k, v in (column_map or {}).items() if k != v}
    ids = [_source_name(column_map, schema.USER_ID), _source_name(column_map, schema.ITEM_ID)]
    raw = read_frame(path, ids)
    raw = raw.rename(columns=_renamer(column_map, raw))
    missing = [c for c in (schema.USER_ID, schema.ITEM_ID) if c not in raw.columns]
    if missing:
        raise ShortlistError(
            f"{path}: missing column(s) {', '.join(missing)} "
            f"(found {', '.join(map(str, raw.columns))}; map one with --map CONTRACT=SOURCE)"
        )
    extra: dict[str, Any] = {"column_map": column_map} if column_map else {}
    n = len(raw)
    if schema.TIMESTAMP in raw.columns:
        timestamps = _unix_seconds(raw[schema.TIMESTAMP], str(path))
    else:
        timestamps = pd.Series(SYNTHETIC_T0 + np.arange(n, dtype=np.int64))
        extra["synthetic_timestamps"] = (
            "no timestamp column: file row order taken as time order, "
            f"timestamps {SYNTHETIC_T0} + row index (seconds)"
        )
    if schema.WEIGHT in raw.columns:
        weights = pd.to_numeric(raw[schema.WEIGHT], errors="raise").astype("float32")
    else:
        weights = pd.Series(np.ones(n, dtype=np.float32))
        extra["implicit_weights"] = "no weight column: every interaction weighs 1.0"
    interactions = pd.DataFrame(
        {
            schema.USER_ID: raw[schema.USER_ID].astype(str),
            schema.ITEM_ID: raw[schema.ITEM_ID].astype(str),
            schema.TIMESTAMP: timestamps.to_numpy(),
            schema.WEIGHT: weights.to_numpy(),
        }
    )

    if items_path is not None:
        df = read_frame(items_path, [_source_name(column_map, schema.ITEM_ID)])
        df = df.rename(columns=_renamer(column_map, df))
        if schema.ITEM_ID not in df.columns:
            raise ShortlistError(f"{items_path}: no {schema.ITEM_ID} column")
        items = _features(df, schema.ITEM_ID, {"title": str, "genres": list})
    else:
        ids = pd.unique(interactions[schema.ITEM_ID])
        items = pd.DataFrame(
            {schema.ITEM_ID: ids, "title": [""] * len(ids), "genres": [[] for _ in ids]}
        )
    if users_path is not None:
        df = read_frame(users_path, [_source_name(column_map, schema.USER_ID)])
        df = df.rename(columns=_renamer(column_map, df))
        if schema.USER_ID not in df.columns:
            raise ShortlistError(f"{users_path}: no {schema.USER_ID} column")
        users = _features(df, schema.USER_ID, {})
    else:
        users = pd.DataFrame({schema.USER_ID: pd.unique(interactions[schema.USER_ID])})
    return interactions, items, users, extra
