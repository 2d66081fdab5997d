"""MovieLens importers: the real ml-100k release, and 1M / latest on tiny files in their exact formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shortlist.data import movielens
from shortlist.errors import ShortlistError


@pytest.fixture(scope="module")
def ml100k(ml100k_path: Path):
    return movielens.load_ml100k(ml100k_path)


def test_ml100k_counts_and_types(ml100k):
    interactions, items, users = ml100k
    assert len(interactions) == 100_000
    assert interactions["user_id"].nunique() == 943
    assert interactions["item_id"].nunique() == 1682
    assert len(items) == 1682 and len(users) == 943
    assert interactions["timestamp"].dtype == np.int64
    assert interactions["weight"].dtype == np.float32
    assert interactions["timestamp"].min() == 874724710
    assert interactions["timestamp"].max() == 893286638
    hist = interactions["weight"].value_counts().sort_index()
    assert hist.to_dict() == {1.0: 6110, 2.0: 11370, 3.0: 27145, 4.0: 34174, 5.0: 21201}
    for df, col in ((interactions, "user_id"), (interactions, "item_id"), (items, "item_id")):
        assert all(isinstance(v, str) for v in df[col].head(50))
    assert set(interactions["item_id"]) == set(items["item_id"])
    assert set(interactions["user_id"]) == set(users["user_id"])


def test_ml100k_items_genres_titles_years(ml100k):
    _, items, _ = ml100k
    genres = {g for gs in items["genres"] for g in gs}
    assert len(genres) == 19
    assert {"unknown", "Children's", "Film-Noir", "Sci-Fi"} <= genres
    toy = items.set_index("item_id").loc["1"]
    assert toy["title"] == "Toy Story (1995)"
    assert list(toy["genres"]) == ["Animation", "Children's", "Comedy"]
    assert toy["year"] == 1995.0
    titles = set(items["title"])
    assert "Misérables, Les (1995)" in titles  # latin-1 bytes decoded, not mangled
    assert "C'est arrivé près de chez vous (1992)" in titles
    unknown = items.set_index("item_id").loc["267"]
    assert unknown["title"] == "unknown" and np.isnan(unknown["year"])
    assert items["year"].isna().sum() == 1


def test_ml100k_users(ml100k):
    _, _, users = ml100k
    assert users["age"].dtype == np.int64
    assert users["age"].between(7, 73).all()
    assert set(users["gender"]) == {"M", "F"}
    assert users["occupation"].nunique() == 21
    # Zip codes stay text: Canadian codes and leading zeros survive.
    assert users["zip_code"].map(type).eq(str).all()
    assert (~users["zip_code"].str.fullmatch(r"\d+")).sum() == 18


def _write_ml1m(d: Path) -> None:
    d.mkdir()
    (d / "ratings.dat").write_bytes(
        b"1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
        b"2::3408::1::978299000\n"
    )
    (d / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
        "3408::Misérables, Les (1935)::Drama\n"
        '9999::"Great" Escape, The::Adventure|War\n'.encode("latin-1")
    )
    (d / "users.dat").write_bytes(b"1::F::1::10::48067\n2::M::56::16::70072\n")


def test_ml1m_tiny(tmp_path: Path):
    _write_ml1m(tmp_path / "ml-1m")
    interactions, items, users = movielens.load_ml1m(tmp_path / "ml-1m")
    assert len(interactions) == 4
    assert interactions["user_id"].tolist() == ["1", "1", "2", "2"]
    assert interactions["weight"].tolist() == [5.0, 3.0, 4.0, 1.0]
    assert interactions["timestamp"].iloc[0] == 978300760
    by_id = items.set_index("item_id")
    assert by_id.loc["3408", "title"] == "Misérables, Les (1935)"
    assert list(by_id.loc["661", "genres"]) == ["Animation", "Children's", "Musical"]
    assert by_id.loc["1193", "year"] == 1975.0
    assert by_id.loc["9999", "title"] == '"Great" Escape, The'  # bare quotes kept
    assert np.isnan(by_id.loc["9999", "year"])
    u = users.set_index("user_id")
    assert u.loc["1", "occupation"] == "K-12 student" and u.loc["1", "age"] == 1
    assert u.loc["2", "occupation"] == "self-employed" and u.loc["2", "gender"] == "M"
    assert u.loc["2", "zip_code"] == "70072"


def _write_latest(d: Path, crlf: bool, tags: bool) -> None:
    d.mkdir()
    nl = "\r\n" if crlf else "\n"
    ratings = ["userId,movieId,rating,timestamp", "1,1,4.0,964982703", "1,3,4.5,964981247"]
    ratings += ["7,2,0.5,1106635946"]
    (d / "ratings.csv").write_bytes((nl.join(ratings) + nl).encode())
    movies = [
        "movieId,title,genres",
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy",
        '2,"American President, The (1995)",Comedy|Drama|Romance',
        "3,Señor Cuñado (2006–2007) ,(no genres listed)",
    ]
    (d / "movies.csv").write_bytes((nl.join(movies) + nl).encode("utf-8"))
    if tags:
        rows = ["userId,movieId,tag,timestamp", "2,1,Pixar,1445714994", "5,1,pixar,1445714995"]
        rows += ['3,2,"politics, romance",1445714996']
        (d / "tags.csv").write_bytes((nl.join(rows) + nl).encode())


@pytest.mark.parametrize("crlf", [False, True])
def test_ml_latest_tiny(tmp_path: Path, crlf: bool):
    _write_latest(tmp_path / "latest", crlf=crlf, tags=True)
    interactions, items, users = movielens.load_ml_latest(tmp_path / "latest")
    assert interactions["weight"].tolist() == [4.0, 4.5, 0.5]
    assert interactions["timestamp"].dtype == np.int64
    by_id = items.set_index("item_id")
    assert by_id.loc["2", "title"] == "American President, The (1995)"
    assert not any(t.endswith("\r") for t in items["title"])
    assert list(by_id.loc["2", "genres"]) == ["Comedy", "Drama", "Romance"]
    assert list(by_id.loc["3", "genres"]) == []
    assert by_id.loc["3", "title"] == "Señor Cuñado (2006–2007)"
    assert by_id.loc["3", "year"] == 2006.0
    assert list(by_id.loc["1", "tags"]) == ["pixar"]
    assert list(by_id.loc["2", "tags"]) == ["politics, romance"]
    assert list(by_id.loc["3", "tags"]) == []
    assert sorted(users["user_id"]) == ["1", "7"]


def test_ml_latest_without_tags(tmp_path: Path):
    _write_latest(tmp_path / "latest", crlf=False, tags=False)
    _, items, _ = movielens.load_ml_latest(tmp_path / "latest")
    assert "tags" not in items.columns


def test_year_from_title():
    years = movielens.year_from_title(
        pd.Series(["Heat (1995)", "Heat (1995) ", "Twin Peaks (1990-1991)", "No year", "1984"])
    )
    assert years.iloc[:3].tolist() == [1995.0, 1995.0, 1990.0]
    assert years.iloc[3:].isna().all()


def test_missing_files_name_the_problem(tmp_path: Path):
    with pytest.raises(ShortlistError, match="ratings.dat"):
        movielens.load_ml1m(tmp_path)
    with pytest.raises(ShortlistError, match="unknown MovieLens source"):
        movielens.load("movielens-10m", tmp_path)
