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
    """A CSV (UTF-8, header row) or Parquet file as a DataFrame; id columns read as text.

    An empty file, a header without rows, text that is not UTF-8 or a file that does not
    parse is a ShortlistError naming the file and what is wrong, never a bare parser or
    Arrow error from deeper down."""
    text = str(path)
    data = _read_bytes(text)
    if not data.strip():
        raise ShortlistError(f"{text}: empty file (expected a header row, then data rows)")
    if text.lower().endswith(_PARQUET_SUFFIXES):
        try:
            df = pd.read_parquet(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - any Arrow/parquet error: name the file
            raise ShortlistError(f"{text}: not a readable Parquet file: {exc}") from None
        for col in id_columns:
            if col in df.columns:
                df[col] = df[col].astype(str)
    else:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise ShortlistError(
                f"{text}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
                "save the file as UTF-8"
            ) from None
        try:
            header = pd.read_csv(io.BytesIO(data), nrows=0).columns
            dtypes = {c: str for c in id_columns if c in header}
            df = pd.read_csv(io.BytesIO(data), dtype=dtypes, keep_default_na=True)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
            raise ShortlistError(f"{text}: not a readable CSV file: {exc}") from None
    if len(df) == 0:
        columns = ", ".join(map(str, df.columns)) or "none"
        raise ShortlistError(f"{text}: no data rows (columns: {columns})")
    return df


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


def _rows_named(mask: pd.Series, values: pd.Series, limit: int = 3) -> str:
    """'data row 3: 'x', data row 7: 'y'' for the first rows where mask is true (1-based)."""
    positions = np.flatnonzero(mask.to_numpy())[:limit]
    return ", ".join(f"data row {p + 1}: {values.iloc[p]!r}" for p in positions)


def _numbers(values: pd.Series, where: str, column: str) -> pd.Series:
    """A numeric column, or a ShortlistError naming the file, column and first bad rows."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values
    numeric = pd.to_numeric(values, errors="coerce")
    bad = numeric.isna() & values.notna()
    if bad.any():
        raise ShortlistError(
            f"{where}: column {column}: {int(bad.sum())} value(s) are not numbers, e.g. "
            + _rows_named(bad, values)
        )
    return numeric


def _unix_seconds(values: pd.Series, where: str) -> pd.Series:
    """Unix seconds from numbers, or from date-time text (ISO 8601; UTC unless it says).

    One column holds one kind: a mix of numbers and dates is an error, and every error
    quotes the rows that break the rule (not a value that is fine)."""
    if values.isna().any():
        raise ShortlistError(
            f"{where}: column timestamp: {int(values.isna().sum())} empty value(s), e.g. "
            + ", ".join(f"data row {p + 1}" for p in np.flatnonzero(values.isna().to_numpy())[:3])
        )
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numeric = values.astype("float64")
    else:
        numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        finite = np.isfinite(numeric.to_numpy())
        if not finite.all():
            raise ShortlistError(
                f"{where}: column timestamp: non-finite unix seconds, e.g. "
                + _rows_named(pd.Series(~finite), values)
            )
        return numeric.astype("int64")
    text = values.astype(str)
    when = pd.to_datetime(text.where(numeric.isna()), utc=True, format="ISO8601", errors="coerce")
    bad = numeric.isna() & when.isna()
    if bad.any():
        raise ShortlistError(
            f"{where}: column timestamp: {int(bad.sum())} value(s) are neither unix seconds "
            "nor ISO 8601 date-times, e.g. " + _rows_named(bad, values)
        )
    if numeric.notna().any():
        raise ShortlistError(
            f"{where}: column timestamp mixes unix seconds ("
            + _rows_named(numeric.notna(), values, 1)
            + ") and date-times ("
            + _rows_named(numeric.isna(), values, 1)
            + "); use one kind"
        )
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
        weights = _numbers(raw[schema.WEIGHT], str(path), schema.WEIGHT).astype("float32")
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
        extra["item_features"] = "none"  # ids only: validation expects no titles
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
