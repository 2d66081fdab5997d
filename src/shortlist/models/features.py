"""Feature preprocessing for the two towers: fitted once on training data, saved as JSON.

The state holds everything needed to turn raw tables into model inputs: id vocabularies
(index 0 is the out-of-vocabulary bucket), the genre vocabulary (multi-hot), the hashing
of title tokens (stable across processes, no vocabulary), mean/std of item numerics, user
categorical vocabularies and numeric bucket edges, and the context encoding (hour of day,
day of week). Serving and training call the same encoders, so a model dir is self-contained.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd

from shortlist.data import schema

TITLE_TOKENS = 8  # tokens kept per title (padded with 0)
USER_NUMERIC_BUCKETS = 8  # quantile buckets for numeric user features such as age
MAX_USER_CATEGORIES = 200  # a user column with more distinct values (zip code) is skipped
_TOKEN = re.compile(r"[a-z0-9]+")
_ROW_SEP = "\x00"  # joins titles for one regex pass; never part of a token
_TOKEN_OR_SEP = re.compile(r"[a-z0-9]+|\x00")
_VECTOR_MIN = 1024  # item id lookups at least this long use a vectorised index
_SMALL_LOOKUP = 64  # user tables/requests up to this size are matched with plain Python


def stable_hash(values: Any) -> np.ndarray:
    """64-bit hash of ids or tokens that is identical across processes and machines."""
    arr = np.asarray(values, dtype=object).astype(str).astype(object)
    return pd.util.hash_array(arr, categorize=False).astype(np.uint64)


@dataclass
class FeatureState:
    """Fitted preprocessing state (JSON-serialisable)."""

    item_vocab: list[str]
    user_vocab: list[str]
    genre_vocab: list[str]
    title_hash_buckets: int
    item_numeric: dict[str, list[float]]  # column -> [mean, std]
    user_categorical: dict[str, list[str]]  # column -> vocabulary (index 0 = unknown)
    user_numeric: dict[str, list[float]]  # column -> bucket edges
    user_buckets: int = 1  # buckets for users unseen at training
    _item_index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)
    _user_index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._item_index = {i: k + 1 for k, i in enumerate(self.item_vocab)}
        self._user_index = {u: k + self.user_buckets for k, u in enumerate(self.user_vocab)}
        # Lookup tables built once (plain attributes, not fields: never serialised).
        self._item_pd_index: pd.Index | None = None  # built on the first large lookup
        self._genre_index = {g: k for k, g in enumerate(self.genre_vocab)}
        self._user_cat_index = {
            col: {v: j + 1 for j, v in enumerate(vocab)}
            for col, vocab in self.user_categorical.items()
        }
        self._user_edges = {col: np.asarray(e, dtype=float) for col, e in self.user_numeric.items()}

    # --- sizes -------------------------------------------------------------------------
    @property
    def n_item_ids(self) -> int:
        return len(self.item_vocab) + 1

    @property
    def n_user_ids(self) -> int:
        return len(self.user_vocab) + self.user_buckets

    @property
    def n_genres(self) -> int:
        return len(self.genre_vocab)

    @property
    def n_item_numeric(self) -> int:
        return 2 * len(self.item_numeric)  # value and missing indicator

    @property
    def user_cardinalities(self) -> list[int]:
        cards = [len(v) + 1 for v in self.user_categorical.values()]
        cards += [len(e) + 2 for e in self.user_numeric.values()]  # 0 unknown, buckets 1..
        return cards

    # --- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_item_index")
        d.pop("_user_index")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureState:
        return cls(**d)

    # --- fitting -----------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        train: pd.DataFrame,
        items: pd.DataFrame,
        users: pd.DataFrame | None,
        *,
        title_hash_buckets: int,
        user_buckets: int = 1,
    ) -> FeatureState:
        """Vocabularies from the training interactions; content statistics from the tables."""
        item_vocab = sorted(set(train[schema.ITEM_ID].astype(str)))
        user_vocab = sorted(set(train[schema.USER_ID].astype(str)))
        genres: set[str] = set()
        if "genres" in items:
            for g in items["genres"]:
                genres.update(_as_list(g))
        numeric: dict[str, list[float]] = {}
        for col in _item_numeric_columns(items):
            v = pd.to_numeric(items[col], errors="coerce").astype(float)
            mean, std = float(v.mean()) if v.notna().any() else 0.0, float(v.std() or 1.0)
            numeric[col] = [mean, std if np.isfinite(std) and std > 0 else 1.0]
        user_cat: dict[str, list[str]] = {}
        user_num: dict[str, list[float]] = {}
        if users is not None:
            for col in users.columns:
                if col == schema.USER_ID:
                    continue
                s = users[col]
                if pd.api.types.is_numeric_dtype(s):
                    q = np.linspace(0, 1, USER_NUMERIC_BUCKETS + 1)[1:-1]
                    edges = np.unique(np.nanquantile(s.astype(float), q)) if s.notna().any() else []
                    user_num[col] = [float(e) for e in edges]
                else:
                    values = sorted(set(s.dropna().astype(str)))
                    if 0 < len(values) <= MAX_USER_CATEGORIES:
                        user_cat[col] = values
        return cls(
            item_vocab=item_vocab,
            user_vocab=user_vocab,
            genre_vocab=sorted(genres),
            title_hash_buckets=int(title_hash_buckets),
            item_numeric=numeric,
            user_categorical=user_cat,
            user_numeric=user_num,
            user_buckets=int(user_buckets),
        )

    # --- encoders ----------------------------------------------------------------------
    def item_index(self, item_ids: Any) -> np.ndarray:
        """Vocabulary index per item id; 0 for ids unseen at training (the OOV bucket).

        Small inputs (a history) use the dict; large ones one vectorised hash-table lookup."""
        if not hasattr(item_ids, "__len__"):
            item_ids = list(item_ids)
        if len(item_ids) < _VECTOR_MIN or len(self._item_index) != len(self.item_vocab):
            get = self._item_index.get
            return np.fromiter((get(str(i), 0) for i in item_ids), dtype=np.int64)
        if self._item_pd_index is None:
            self._item_pd_index = pd.Index(np.asarray(self.item_vocab, dtype=object))
        if isinstance(item_ids, pd.Series | pd.Index):
            keys = np.asarray(item_ids.astype(str), dtype=object)
        else:
            keys = np.asarray([str(i) for i in item_ids], dtype=object)
        pos = self._item_pd_index.get_indexer(keys)
        return np.where(pos >= 0, pos + 1, 0).astype(np.int64)

    def user_index(self, user_ids: Any) -> np.ndarray:
        """Vocabulary index per user id; unseen users hash into [0, user_buckets)."""
        ids = [str(u) for u in user_ids]
        out = np.fromiter(
            (self._user_index.get(u, -1) for u in ids), dtype=np.int64, count=len(ids)
        )
        unseen = out < 0
        if unseen.any():
            h = stable_hash([u for u, m in zip(ids, unseen, strict=True) if m])
            out[unseen] = (h % np.uint64(self.user_buckets)).astype(np.int64)
        return out

    def encode_items(self, items: pd.DataFrame) -> dict[str, np.ndarray]:
        """Item tower inputs: id index, genres multi-hot, hashed title tokens, numerics.

        Vectorised: genres are decoded once per distinct value and title tokens hashed once
        per distinct token (hashing is element-wise, so the result equals per-row hashing)."""
        n = len(items)
        genres = np.zeros((n, self.n_genres), dtype=np.float32)
        if "genres" in items and self.n_genres:
            self._encode_genres(items["genres"], genres)
        titles = items["title"] if "title" in items else pd.Series([""] * n)
        tokens = self.title_tokens(titles)
        numerics = np.zeros((n, self.n_item_numeric), dtype=np.float32)
        for k, (col, (mean, std)) in enumerate(self.item_numeric.items()):
            if col in items:
                v = pd.to_numeric(items[col], errors="coerce").to_numpy(dtype=float)
            else:
                v = np.full(n, np.nan)
            missing = ~np.isfinite(v)
            numerics[:, 2 * k] = np.where(missing, 0.0, (v - mean) / std)
            numerics[:, 2 * k + 1] = missing
        return {
            "item_idx": self.item_index(items[schema.ITEM_ID].astype(str)),
            "genres": genres,
            "title": tokens,
            "numerics": numerics,
        }

    def encode_users(self, user_ids: Any, users: pd.DataFrame | None) -> dict[str, np.ndarray]:
        """Query tower user inputs: id index and categorical feature indices (0 = unknown).

        Rows of `users` are matched by user id (the first row of a duplicated id wins); only
        the matched rows are read, so a per-request call costs no table-wide pandas work."""
        ids = [str(u) for u in user_ids]
        n = len(ids)
        cols = list(self.user_categorical) + list(self.user_numeric)
        feats = np.zeros((n, len(cols)), dtype=np.int64)
        if users is not None and len(cols) and len(users):
            arrays = _small_frame_arrays(
                users, list(self.user_categorical), list(self.user_numeric)
            )
            if arrays is not None:
                self._encode_user_rows(ids, arrays, feats)
                return {"user_idx": self.user_index(ids), "user_feats": feats}
            pos = _first_positions(users[schema.USER_ID], ids)
            found = pos >= 0
            take = pos[found]
            small = len(users) <= _SMALL_LOOKUP  # plain Python beats pandas indexing here
            for k, (col, idx) in enumerate(self._user_cat_index.items()):
                if col in users and len(take):
                    if small:
                        column = users[col].tolist()
                        vals = [column[j] for j in take]
                    else:
                        vals = users[col].iloc[take].tolist()
                    if not found.all() and users[col].dtype.kind in "iu":
                        vals = [float(v) for v in vals]  # as a reindex with missing rows does
                    feats[found, k] = [idx.get(str(v), 0) if pd.notna(v) else 0 for v in vals]
            base = len(self.user_categorical)
            for k, (col, edges) in enumerate(self._user_edges.items()):
                if col in users:
                    v = np.full(n, np.nan)
                    s = users[col]
                    if len(take) and small and pd.api.types.is_numeric_dtype(s.dtype):
                        v[found] = s.to_numpy(dtype=float, na_value=np.nan)[take]
                    elif len(take):
                        v[found] = pd.to_numeric(s.iloc[take], errors="coerce").to_numpy(
                            dtype=float, na_value=np.nan
                        )
                    b = np.searchsorted(edges, v, side="right") + 1
                    feats[:, base + k] = np.where(np.isfinite(v), b, 0)
        return {"user_idx": self.user_index(ids), "user_feats": feats}

    def _encode_user_rows(self, ids: list[str], arrays: dict[str, Any], feats: np.ndarray) -> None:
        """encode_users for a small frame given as column arrays: no pandas per call."""
        first: dict[str, int] = {}
        for j, u in enumerate(arrays[schema.USER_ID]):
            if isinstance(u, str) or not pd.isna(u):  # astype(str) keeps missing ids missing
                first.setdefault(str(u), j)
        pos = [first.get(u, -1) for u in ids]
        for k, (col, idx) in enumerate(self._user_cat_index.items()):
            values = arrays.get(col)
            if values is None:
                continue
            for r, j in enumerate(pos):
                if j >= 0:
                    v = values[j]
                    feats[r, k] = idx.get(str(v), 0) if pd.notna(v) else 0
        base = len(self.user_categorical)
        for k, (col, edges) in enumerate(self._user_edges.items()):
            values = arrays.get(col)
            if values is None:
                continue
            for r, j in enumerate(pos):
                if j >= 0:
                    v = float(values[j])
                    if np.isfinite(v):
                        feats[r, base + k] = int(np.searchsorted(edges, v, side="right")) + 1

    # --- vectorised helpers ------------------------------------------------------------
    def title_tokens(self, titles: Any) -> np.ndarray:
        """(n, TITLE_TOKENS) int64 hashed title tokens + 1, 0-padded (0 also for non-strings).

        One regex pass over all lower-cased titles joined by a separator that is not part of
        any token (rows split at it), then one hash per distinct token."""
        n = len(titles)
        tokens = np.zeros((n, TITLE_TOKENS), dtype=np.int64)
        if not n:
            return tokens
        lowered = [t.lower() if isinstance(t, str) else "" for t in titles]
        joined = _ROW_SEP.join(lowered)
        if joined.count(_ROW_SEP) != n - 1:  # a title holds the separator: row by row
            return self._title_tokens_by_row(lowered, tokens)
        codes, uniques = pd.factorize(np.asarray(_TOKEN_OR_SEP.findall(joined), dtype=object))
        # (found in Python: numpy string comparison would drop the trailing NUL)
        sep_code = next((k for k, u in enumerate(uniques) if u == _ROW_SEP), -1)
        is_sep = codes == sep_code
        row = np.cumsum(is_sep)[~is_sep]
        codes = codes[~is_sep]
        pos = np.arange(len(row)) - np.searchsorted(row, row, side="left")
        keep = pos < TITLE_TOKENS
        hashed = (stable_hash(uniques) % np.uint64(self.title_hash_buckets)).astype(np.int64) + 1
        tokens[row[keep], pos[keep]] = hashed[codes[keep]]
        return tokens

    def _title_tokens_by_row(self, lowered: list[str], tokens: np.ndarray) -> np.ndarray:
        n = len(lowered)
        per_row = [_TOKEN.findall(t)[:TITLE_TOKENS] for t in lowered]
        lengths = np.fromiter(map(len, per_row), dtype=np.int64, count=n)
        total = int(lengths.sum())
        if not total:
            return tokens
        codes, uniques = pd.factorize(np.fromiter(chain.from_iterable(per_row), object, total))
        hashed = (stable_hash(uniques) % np.uint64(self.title_hash_buckets)).astype(np.int64) + 1
        rows = np.repeat(np.arange(n), lengths)
        starts = np.cumsum(lengths) - lengths
        cols = np.arange(total) - np.repeat(starts, lengths)
        tokens[rows, cols] = hashed[codes]
        return tokens

    def _encode_genres(self, values: pd.Series, out: np.ndarray) -> None:
        """Fill the (n, n_genres) multi-hot `out`, decoding each distinct value once."""
        gidx = self._genre_index

        def hot(value: Any) -> list[int]:
            return [gidx[g] for g in _as_list(value) if g in gidx]

        try:
            codes, uniques = pd.factorize(values, use_na_sentinel=False)
        except (TypeError, ValueError):  # unhashable values (lists, arrays): row by row
            for r, g in enumerate(values):
                out[r, hot(g)] = 1.0
            return
        table = np.zeros((len(uniques) + 1, out.shape[1]), dtype=np.float32)
        for u, g in enumerate(uniques):
            table[u, hot(g)] = 1.0
        out[:] = table[codes]


def _small_frame_arrays(
    frame: pd.DataFrame, categorical: list[str], numeric: list[str]
) -> dict[str, list[Any]] | None:
    """The raw column values of a small frame (one request's user rows), or None when the
    frame is large or a column's dtype could make plain element access differ from the
    pandas path (then that path runs). Missing columns are left out."""
    get = getattr(frame, "_get_column_array", None)
    small = len(frame) <= _SMALL_LOOKUP and frame.columns.is_unique
    if get is None or not small or schema.USER_ID not in frame.columns:
        return None
    out: dict[str, list[Any]] = {}
    for name in [schema.USER_ID, *categorical, *numeric]:
        if name not in frame.columns:
            continue
        arr = get(frame.columns.get_loc(name))
        kind = arr.dtype.kind if isinstance(arr, np.ndarray) else ""
        if name in numeric and kind in "iufb" and kind:
            out[name] = arr.astype(float).tolist()
        elif name not in numeric and (kind == "O" or (name == schema.USER_ID and kind in "iu")):
            out[name] = arr.tolist()
        elif name not in numeric and not kind and isinstance(arr.dtype, pd.StringDtype):
            out[name] = list(arr)
        else:
            return None
    return out


def _first_positions(column: pd.Series, ids: list[str]) -> np.ndarray:
    """Row position of the first occurrence of each id in `column` (as strings); -1 if absent."""
    if len(ids) <= _SMALL_LOOKUP or len(column) <= _SMALL_LOOKUP:
        if len(column) <= _SMALL_LOOKUP:
            first: dict[str, int] = {}
            for j, u in enumerate(column.tolist()):
                if isinstance(u, str) or not pd.isna(u):  # astype(str) keeps missing missing
                    first.setdefault(str(u), j)
            return np.fromiter((first.get(u, -1) for u in ids), np.int64, count=len(ids))
        # A few ids in a large table: compare in place (string columns need no conversion).
        keys = column if isinstance(column.dtype, pd.StringDtype) else column.astype(str)
        out = np.full(len(ids), -1, dtype=np.int64)
        for r, u in enumerate(ids):
            hit = np.flatnonzero(keys.eq(u).to_numpy(dtype=bool, na_value=False))
            if len(hit):
                out[r] = hit[0]
        return out
    keys = pd.Index(column.astype(str).to_numpy(dtype=object))
    if keys.is_unique:
        return keys.get_indexer(np.asarray(ids, dtype=object)).astype(np.int64)
    dedup = ~keys.duplicated(keep="first")
    pos = np.flatnonzero(dedup)
    got = keys[dedup].get_indexer(np.asarray(ids, dtype=object))
    return np.where(got >= 0, pos[got], -1).astype(np.int64)


def encode_context(timestamps: Any, n: int) -> np.ndarray:
    """(n, 2) int64: hour of day + 1 and day of week + 1 (UTC); 0 where unknown."""
    out = np.zeros((n, 2), dtype=np.int64)
    if timestamps is None:
        return out
    ts = np.asarray(timestamps, dtype=float)
    ok = np.isfinite(ts)
    t = np.where(ok, ts, 0).astype(np.int64)
    out[:, 0] = np.where(ok, (t // 3600) % 24 + 1, 0)
    out[:, 1] = np.where(ok, (t // 86400 + 3) % 7 + 1, 0)  # 1970-01-01 was a Thursday
    return out


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in value.split("|") if v]
    try:
        return [str(v) for v in value]
    except TypeError:
        return []


def _item_numeric_columns(items: pd.DataFrame) -> list[str]:
    skip = {schema.ITEM_ID, "title", "genres"}
    return [
        c
        for c in items.columns
        if c not in skip
        and pd.api.types.is_numeric_dtype(items[c])
        and not pd.api.types.is_bool_dtype(items[c])
    ]
