"""Steam and Amazon loaders: tiny fixtures in the real file formats (signals, history order,
titles, genres), their malformed input named by file, row and field, and the real shared data.
"""

from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_datasets import FIXTURES, check_shape

from simulator import paths
from simulator.datasets import dataset_sources, load_dataset
from simulator.types import DataError

# --- steam loader on a fixture -------------------------------------------------------------


def steam_dir(tmp_path: Path) -> Path:
    """Build a tiny steam/ folder in the real formats from the readable fixture files."""
    src, root = FIXTURES / "steam", tmp_path / "steam"
    root.mkdir()
    library = pd.read_csv(src / "users_items.csv", dtype=str, keep_default_na=False)
    for col in ("playtime_forever", "playtime_2weeks"):
        library[col] = library[col].astype("int64")
    library.to_parquet(root / "australian_users_items.parquet", index=False)
    with gzip.open(root / "steam_games.json.gz", "wb") as fh:
        fh.write((src / "steam_games.jsonl").read_bytes())
    for name in ("user_reviews.csv", "billp_list_genre.json"):
        shutil.copy(src / name, root / name)
    return root


def test_steam_fixture_signals_order_titles_and_genres(tmp_path: Path) -> None:
    root = steam_dir(tmp_path)
    ds = load_dataset("steam", data_dir=tmp_path)
    check_shape(ds)
    assert ds.users == ["alice", "bob", "dave"]  # carol has 2 games: dropped
    assert ds.titles() == [
        "Counter-Strike",
        "Team Fortress Classic",
        "Half-Life",
        "Portal & Co",
        "Mystery & Co",
        "Dota 2",
        "Seventy",
        "Eighty",
        "Ninety",
    ]  # app ids 10..90 in id order; 50 is named by steam_games, 85/99999 have no name at all
    assert ds.items["genres"].tolist() == [
        ["Action"],  # steam_games genres win over billp's
        ["Action", "Design & Illustration"],  # billp fallback by title
        ["Action", "Shooter"],  # title matched after dropping ™
        ["Puzzle"],
        ["Indie", "Casual"],  # tags when genres is NaN
        [],  # billp entry is a broken literal: skipped and counted
        ["RPG", "Indie"],  # a Python-literal line with bare NaN
        ["Racing"],
        ["Sports"],
    ]
    by_user = {u: g for u, g in ds.interactions.groupby("user")}
    alice, bob, dave = by_user[0], by_user[1], by_user[2]
    assert alice["item"].tolist() == [0, 1, 2, 3, 4, 5]
    expected = [
        1 + math.log1p(10) + 1,
        0.5,
        -1.0,
        1 + math.log1p(1),
        1 + math.log1p(0.5),
        1 + math.log1p(1 / 60),
    ]
    np.testing.assert_allclose(alice["signal"], expected)
    # library first (file order), then review-only games by date; the year-less review is last
    assert bob["item"].tolist() == [0, 3, 1, 8, 7, 6]
    np.testing.assert_allclose(bob["signal"], [1 + math.log1p(1), 0.5, 2.0, -1.0, 2.0, 2.0])
    assert dave["signal"].tolist() == [2.0] * 5
    assert ds.stats == {
        "rows_read": 25,
        "library_rows": 11,
        "review_rows": 14,
        "unplayed": 2,
        "review_dates_without_year": 1,
        "duplicates": 2,
        "reviews_merged": 2,
        "negative_overrides": 1,
        "genre_lines_skipped": 1,
        "genre_entries_skipped": 1,
        "unknown_items": 2,
        "users_dropped": 1,
        "interactions_dropped": 2,
        "items_without_genres": 1,
        "duplicate_titles": 0,
        "negatives": 2,
    }
    assert ds.sources == dataset_sources("steam", data_dir=tmp_path)
    assert [p.parent for p in ds.sources] == [root] * 4


def rewrite_library(root: Path, **columns: object) -> None:
    path = root / "australian_users_items.parquet"
    frame = pd.read_parquet(path)
    for name, value in columns.items():
        if value is None:
            frame = frame.drop(columns=name)
        else:
            frame[name] = value
    frame.to_parquet(path, index=False)


def test_steam_bad_library_names_file_row_and_field(tmp_path: Path) -> None:
    root = steam_dir(tmp_path)
    rewrite_library(root, playtime_forever=None)
    with pytest.raises(DataError, match=r"parquet, field 'playtime_forever'.*expected columns"):
        load_dataset("steam", data_dir=tmp_path)
    rewrite_library(root, playtime_forever=["60"] * 3 + ["lots"] + ["1"] * 7)
    with pytest.raises(DataError, match=r"parquet, row 3, field 'playtime_forever'.*'lots'"):
        load_dataset("steam", data_dir=tmp_path)
    rewrite_library(root, playtime_forever=[60] * 11, item_id=["10"] * 5 + ["ten"] + ["10"] * 5)
    with pytest.raises(DataError, match=r"parquet, row 5, field 'item_id'.*'ten'"):
        load_dataset("steam", data_dir=tmp_path)
    (root / "australian_users_items.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable parquet file"):
        load_dataset("steam", data_dir=tmp_path)


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ('"Posted March 1, 2015."', '"Posted Smarch 1, 2015."', "row 5, field 'posted'"),
        (",90,False,", ",90,Maybe,", "row 6, field 'recommend'.*'Maybe'"),
        ("user_id,posted", "uid,posted", "field 'user_id'.*expected columns"),
    ],
)
def test_steam_bad_reviews_name_row_and_field(
    tmp_path: Path, old: str, new: str, where: str
) -> None:
    root = steam_dir(tmp_path)
    path = root / "user_reviews.csv"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(DataError, match=rf"user_reviews\.csv, {where}"):
        load_dataset("steam", data_dir=tmp_path)


def test_steam_reviews_that_touch_no_library_game(tmp_path: Path) -> None:
    root = steam_dir(tmp_path)
    path = root / "user_reviews.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([lines[0], *(x for x in lines if x.startswith("dave"))]) + "\n")
    ds = load_dataset("steam", data_dir=tmp_path)
    assert ds.users == ["alice", "dave"]  # bob no longer has 5 positives
    assert ds.stats["reviews_merged"] == 0 and ds.stats["negatives"] == 0


def test_steam_corrupt_metadata_archive_is_an_error(tmp_path: Path) -> None:
    root = steam_dir(tmp_path)
    (root / "steam_games.json.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match=r"steam_games\.json\.gz.*not a readable gzip"):
        load_dataset("steam", data_dir=tmp_path)


# --- amazon loader on a fixture ------------------------------------------------------------


def amazon_dir(tmp_path: Path) -> Path:
    root = tmp_path / "amazon"
    shutil.copytree(FIXTURES / "amazon", root)
    return root


def test_amazon_fixture_history_order_unknowns_and_genres(tmp_path: Path) -> None:
    amazon_dir(tmp_path)
    ds = load_dataset("amazon", data_dir=tmp_path)
    check_shape(ds)
    assert ds.users == ["7", "3"]
    assert ds.titles() == ["Dune", "Emma", "Persuasion", "Ulysses", "Café Stories", "Beloved"]
    assert ds.items["genres"].tolist() == [
        ["Science Fiction & Fantasy", "Science Fiction"],
        ["Literature & Fiction"],
        [],  # broken literal: skipped and counted
        ["Literature & Fiction"],
        ["Cookbooks, Food & Wine"],
        [],  # no entry
    ]
    inter = ds.interactions
    assert inter.loc[inter["user"] == 0, "item"].tolist() == [0, 1, 2, 3, 4]
    assert inter.loc[inter["user"] == 1, "item"].tolist() == [1, 0, 3, 2, 5]
    assert (inter["signal"] == 1.0).all()
    stats = ds.stats
    assert (stats["unknown_items"], stats["duplicates"], stats["users_dropped"]) == (1, 1, 1)
    assert stats["genre_entries_skipped"] == 1 and stats["interactions_dropped"] == 2


@pytest.mark.parametrize(
    ("file", "content", "where"),
    [
        ("users.json", {"not": "a list"}, "expected a JSON list"),
        (
            "users.json",
            [{"userid_encoded": 1, "pos_seq_name": "Dune"}],
            "row 0, field 'pos_seq_name'.*list of titles",
        ),
        (
            "users.json",
            [{"userid_encoded": 1, "pos_seq_name": ["Dune"] * 5}, {"userid_encoded": 2}],
            "row 1, field 'pos_seq_name'.*missing",
        ),
        (
            "users.json",
            [{"userid_encoded": 1, "pos_seq_name": ["Dune", 4]}],
            "row 0, field 'pos_seq_name'",
        ),
        (
            "users.json",
            [{"userid_encoded": 1, "pos_seq_name": []}] * 2,
            "row 1, field 'userid_encoded'.*twice",
        ),
        (
            "users.json",
            [{"userid_encoded": 1, "pos_seq_name": ["Dune", "Emma"]}],
            "no users with >= 5 positive items",
        ),
        ("datamaps.json", {"id2item_dict": {}}, "field 'item2id_dict'"),
        ("datamaps.json", {"item2id_dict": {"Dune": [0]}}, "row 0, field 'item2id_dict'"),
        ("list_genre.json", ["Dune"], "expected a JSON object"),
    ],
)
def test_amazon_malformed_input_names_file_row_and_field(
    tmp_path: Path, file: str, content: object, where: str
) -> None:
    root = amazon_dir(tmp_path)
    (root / file).write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(DataError, match=rf"{file.replace('.', '[.]')}.*{where}"):
        load_dataset("amazon", data_dir=tmp_path)


def test_amazon_invalid_json_and_bad_bytes(tmp_path: Path) -> None:
    root = amazon_dir(tmp_path)
    (root / "users.json").write_text('[{"userid_encoded": 1,,}]', encoding="utf-8")
    with pytest.raises(DataError, match=r"users\.json: not valid JSON.*line 1 column"):
        load_dataset("amazon", data_dir=tmp_path)
    (root / "users.json").write_bytes(b'[\n{"userid_encoded": "\xff"}]')
    with pytest.raises(DataError, match=r"users\.json, row 2: not valid UTF-8 at byte offset 22"):
        load_dataset("amazon", data_dir=tmp_path)


# --- the real shared data ------------------------------------------------------------------


def real_root() -> Path:
    root = paths.data_dir()
    if root is None or not (root / "steam").is_dir() or not (root / "amazon").is_dir():
        pytest.skip("real data not found: set BILLP_DATA to the shared data folder")
    return root


@pytest.mark.data
def test_real_steam() -> None:
    root = real_root()
    ds = load_dataset("steam", data_dir=root)
    check_shape(ds)
    assert ds.n_users > 1000 and ds.n_items > 1000
    assert 0 < ds.stats["negatives"] < 0.05 * len(ds.interactions)
    assert ds.stats["duplicates"] >= 1136  # the README's duplicated library pairs, at least
    positives = (ds.interactions["signal"] > 0).groupby(ds.interactions["user"]).sum()
    assert positives.min() >= 5
    assert not any("&amp;" in t or "™" in t for t in ds.titles())
    assert sum(bool(g) for g in ds.items["genres"]) > 0.8 * ds.n_items


@pytest.mark.data
def test_real_amazon() -> None:
    root = real_root()
    ds = load_dataset("amazon", data_dir=root)
    check_shape(ds)
    assert 1000 <= ds.n_users <= 1049
    assert 10_000 <= ds.n_items <= 13_864
    assert (ds.interactions["signal"] == 1.0).all()
    assert not any("&eacute;" in t for t in ds.titles())
    assert not any("<" in g for genres in ds.items["genres"] for g in genres)
    assert ds.stats["duplicates"] > 0
