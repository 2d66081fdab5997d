"""Importers for the MovieLens releases (GroupLens): 100K, 1M and the "latest" CSV layout.

Each loader reads one release directory in its publisher's exact format and returns the
contract's three tables (interactions, items, users) as DataFrames with string ids, so
`write_dataset` can store them unchanged. Ratings become `weight`; the release year is
parsed from the release date where there is one, else from the "(1995)" in the title.

Formats (no header unless stated):

- 100K: ``u.data`` TAB ``user item rating ts``; ``u.item`` '|' latin-1, 24 fields, 19
  genre flags named by ``u.genre``; ``u.user`` '|' ``user age gender occupation zip``.
- 1M: ``ratings.dat`` ``user::movie::rating::ts``; ``movies.dat`` ``movie::title::g1|g2``
  (latin-1); ``users.dat`` ``user::gender::age::occupation::zip`` (age and occupation
  are codes; the occupation code is mapped to its published name).
- latest: ``ratings.csv`` / ``movies.csv`` / optional ``tags.csv`` with headers, UTF-8,
  quoted titles, LF or CRLF line ends; users have no features beyond their id.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from shortlist.data import schema
from shortlist.errors import ShortlistError

SOURCES = ("movielens-100k", "movielens-1m", "movielens-latest")

# A title ends in "(1995)" (sometimes "(2006-2007)" or trailing blanks in "latest").
_TITLE_YEAR = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*\d{4})?\)\s*$")

# Occupation codes of ml-1m users.dat, as published in its README.
ML1M_OCCUPATIONS = (
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
)
NO_GENRES = "(no genres listed)"


def year_from_title(titles: pd.Series) -> pd.Series:
    """Release year from a trailing "(YYYY)" in each title, float64, NaN when absent."""
    return titles.astype(str).str.extract(_TITLE_YEAR, expand=False).astype("float64")


def _split_genres(values: pd.Series) -> list[list[str]]:
    return [[] if not isinstance(v, str) or v in ("", NO_GENRES) else v.split("|") for v in values]


def _read_sep(path: Path, sep: str, names: list[str], encoding: str = "ascii") -> pd.DataFrame:
    """Read a headerless file with a multi-character separator using the fast C parser.

    The separator is replaced by a byte that never occurs in MovieLens files, and quoting
    is off because titles contain bare quotes.
    """
    data = path.read_bytes().replace(sep.encode(), b"\x1f")
    return pd.read_csv(
        io.BytesIO(data),
        sep="\x1f",
        header=None,
        names=names,
        dtype=str,
        encoding=encoding,
        quoting=csv.QUOTE_NONE,
        keep_default_na=False,
    )


def _interactions(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            schema.USER_ID: df["user_id"].astype(str),
            schema.ITEM_ID: df["item_id"].astype(str),
            schema.TIMESTAMP: pd.to_numeric(df["timestamp"]).astype("int64"),
            schema.WEIGHT: pd.to_numeric(df["rating"]).astype("float32"),
        }
    )


def _require(directory: Path, *names: str) -> None:
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise ShortlistError(f"{directory}: missing {', '.join(missing)} (not a MovieLens dir?)")


def load_ml100k(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """MovieLens 100K: (interactions, items, users) from u.data, u.item, u.genre, u.user."""
    d = Path(path)
    _require(d, "u.data", "u.item", "u.genre", "u.user")
    ratings = pd.read_csv(
        d / "u.data",
        sep="\t",
        header=None,
        names=["user_id", "item_id", "rating", "timestamp"],
        dtype={"user_id": str, "item_id": str},
    )
    genre_names = [
        line.split("|")[0]
        for line in (d / "u.genre").read_text(encoding="latin-1").splitlines()
        if line.strip()
    ]
    if len(genre_names) != 19:
        raise ShortlistError(f"{d / 'u.genre'}: expected 19 genres, found {len(genre_names)}")
    cols = ["item_id", "title", "release_date", "video_release_date", "url", *genre_names]
    raw = _read_sep(d / "u.item", "|", cols, encoding="latin-1")
    flags = raw[genre_names].to_numpy() == "1"
    names = np.asarray(genre_names, dtype=object)
    release = pd.to_datetime(raw["release_date"], format="%d-%b-%Y", errors="coerce")
    year = release.dt.year.astype("float64").fillna(year_from_title(raw["title"]))
    items = pd.DataFrame(
        {
            schema.ITEM_ID: raw["item_id"],
            "title": raw["title"],
            "genres": [list(names[row]) for row in flags],
            "year": year,
        }
    )
    users_raw = _read_sep(d / "u.user", "|", ["user_id", "age", "gender", "occupation", "zip"])
    users = pd.DataFrame(
        {
            schema.USER_ID: users_raw["user_id"],
            "age": users_raw["age"].astype("int64"),
            "gender": users_raw["gender"],
            "occupation": users_raw["occupation"],
            "zip_code": users_raw["zip"],
        }
    )
    return _interactions(ratings), items, users


def load_ml1m(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """MovieLens 1M: (interactions, items, users) from ratings/movies/users.dat ('::')."""
    d = Path(path)
    _require(d, "ratings.dat", "movies.dat", "users.dat")
    ratings = _read_sep(d / "ratings.dat", "::", ["user_id", "item_id", "rating", "timestamp"])
    movies = _read_sep(d / "movies.dat", "::", ["item_id", "title", "genres"], encoding="latin-1")
    items = pd.DataFrame(
        {
            schema.ITEM_ID: movies["item_id"],
            "title": movies["title"],
            "genres": _split_genres(movies["genres"]),
            "year": year_from_title(movies["title"]),
        }
    )
    raw = _read_sep(d / "users.dat", "::", ["user_id", "gender", "age", "occupation", "zip"])
    codes = raw["occupation"].astype("int64")
    if not codes.between(0, len(ML1M_OCCUPATIONS) - 1).all():
        raise ShortlistError(f"{d / 'users.dat'}: occupation code outside 0..20")
    users = pd.DataFrame(
        {
            schema.USER_ID: raw["user_id"],
            "age": raw["age"].astype("int64"),  # an age-group code (1, 18, 25, ...)
            "gender": raw["gender"],
            "occupation": np.asarray(ML1M_OCCUPATIONS, dtype=object)[codes.to_numpy()],
            "zip_code": raw["zip"],
        }
    )
    return _interactions(ratings), items, users


def load_ml_latest(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """MovieLens "latest" (and 20M/25M/32M): ratings.csv, movies.csv, optional tags.csv.

    Tags, when present, become a per-item `tags` list (distinct, lower-cased, sorted).
    """
    d = Path(path)
    _require(d, "ratings.csv", "movies.csv")
    ratings = pd.read_csv(
        d / "ratings.csv", dtype={"userId": str, "movieId": str}, encoding="utf-8"
    ).rename(columns={"userId": "user_id", "movieId": "item_id"})
    movies = pd.read_csv(
        d / "movies.csv", dtype=str, encoding="utf-8", keep_default_na=False
    ).rename(columns={"movieId": "item_id"})
    # CRLF files leave '\r' on the last field when read by some parsers; strip defensively.
    movies = movies.apply(lambda s: s.str.strip("\r"))
    items = pd.DataFrame(
        {
            schema.ITEM_ID: movies["item_id"],
            "title": movies["title"].str.strip(),
            "genres": _split_genres(movies["genres"]),
            "year": year_from_title(movies["title"]),
        }
    )
    if (d / "tags.csv").is_file():
        tags = pd.read_csv(
            d / "tags.csv", dtype=str, encoding="utf-8", keep_default_na=False
        ).rename(columns={"movieId": "item_id"})
        tags["tag"] = tags["tag"].str.strip().str.lower()
        tags = tags[tags["tag"] != ""]
        per_item = tags.groupby("item_id")["tag"].agg(lambda s: sorted(set(s)))
        items["tags"] = [per_item.get(i, []) for i in items[schema.ITEM_ID]]
    interactions = _interactions(ratings)
    users = pd.DataFrame({schema.USER_ID: pd.unique(interactions[schema.USER_ID])})
    return interactions, items, users


LOADERS = {
    "movielens-100k": (load_ml100k, ("u.data", "u.item", "u.genre", "u.user")),
    "movielens-1m": (load_ml1m, ("ratings.dat", "movies.dat", "users.dat")),
    "movielens-latest": (load_ml_latest, ("ratings.csv", "movies.csv", "tags.csv")),
}


def load(source: str, path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Dispatch on the source name (one of SOURCES)."""
    if source not in LOADERS:
        raise ShortlistError(f"unknown MovieLens source {source!r} (one of {', '.join(SOURCES)})")
    return LOADERS[source][0](path)


def input_checksums(source: str, path: str | Path) -> dict[str, str]:
    """sha256 of each input file that exists, for the snapshot's provenance record."""
    d = Path(path)
    out = {}
    for name in LOADERS[source][1]:
        f = d / name
        if f.is_file():
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(block)
            out[name] = h.hexdigest()
    return out
