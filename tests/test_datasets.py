"""Dataset loaders, format side: title and genre normalization, the csv loader (column mapping,
ordering, malformed input named by file, row and field), the registry and its dispatch.

The Steam and Amazon loaders (fixtures in their real formats, and the real data) are tested in
test_datasets_steam_amazon.py, which shares `check_shape` and `FIXTURES` from here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simulator.datasets import (
    DATASETS,
    dataset_sources,
    load_dataset,
    normalize_title,
    parse_genres,
)
from simulator.types import DataError, Dataset

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"


def check_shape(ds: Dataset) -> None:
    """Assert the Dataset contract every later stage relies on."""
    assert list(ds.items["item"]) == list(range(ds.n_items))
    assert all(isinstance(t, str) and t for t in ds.items["title"])
    assert all(isinstance(g, list) for g in ds.items["genres"])
    inter = ds.interactions
    assert list(inter.columns) == ["user", "item", "signal", "order"]
    assert inter["user"].between(0, ds.n_users - 1).all()
    assert inter["item"].between(0, ds.n_items - 1).all()
    assert set(inter["user"]) == set(range(ds.n_users))
    assert set(inter["item"]) == set(range(ds.n_items))
    assert not inter.duplicated(["user", "item"]).any()
    assert (inter["signal"] != 0).all()
    for _, group in inter.groupby("user"):
        assert list(group["order"]) == list(range(len(group)))


# --- normalization -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Portal &amp; Co", "Portal & Co"),
        ("Mount &amp;amp; Blade", "Mount & Blade"),
        ("Caf&eacute; &amp;#39;s", "Café 's"),
        ("Batman™: Arkham Origins", "Batman: Arkham Origins"),
        ("Far Cry® 3 ©", "Far Cry 3"),
        ("  STAR   WARS\u00a0Republic \t Commando ", "STAR WARS Republic Commando"),
        ("", ""),
        ("™ ®", ""),
    ],
)
def test_normalize_title(raw: str, expected: str) -> None:
    assert normalize_title(raw) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["Action", " Indie ", "Action"], ["Action", "Indie"]),
        ("['Action', 'Indie']", ["Action", "Indie"]),
        (
            "['Literature & Fiction', '</span>', 'Design &amp;amp; Illustration']",
            ["Literature & Fiction", "Design & Illustration"],
        ),
        ("Action|Indie||<b>RPG</b>|Action", ["Action", "Indie", "RPG"]),
        (None, []),
        (float("nan"), []),
        ("", []),
        ("[]", []),
        (np.array(["Casual"]), ["Casual"]),
    ],
)
def test_parse_genres(value: object, expected: list[str]) -> None:
    assert parse_genres(value) == expected


@pytest.mark.parametrize("bad", ["['Action', 'Indie'", "[__import__('os')]", "[1, 2]", 5])
def test_parse_genres_rejects_malformed(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_genres(bad)


# --- csv loader ----------------------------------------------------------------------------


def csv_paths(tmp_path: Path, inter: str | None = None, items: str | None = None) -> dict:
    """Return csv loader options, replacing either fixture file with the given text."""
    out = {}
    for key, text in (("interactions", inter), ("items", items)):
        path = FIXTURES / "csv" / f"{key}.csv"
        if text is not None:
            path = tmp_path / f"{key}.csv"
            path.write_text(text, encoding="utf-8")
        out[key] = path
    return out


def test_csv_loader_maps_ratings_orders_by_time_and_splits_genres(tmp_path: Path) -> None:
    ds = load_dataset("csv", **csv_paths(tmp_path))
    check_shape(ds)
    assert ds.users == ["u1", "u2"]
    assert ds.titles() == ["Half-Life&2", "Portal 2", "Braid", "Limbo", "Fez", "Celeste"]
    assert ds.items["genres"].tolist() == [
        ["Action", "Shooter"],
        ["Puzzle"],
        ["Puzzle", "Indie"],
        [],
        ["Indie"],
        ["Platformer"],
    ]
    u1 = ds.interactions[ds.interactions["user"] == 0]
    assert u1["item"].tolist() == [3, 1, 2, 0, 4, 5]  # timestamp order, not file order
    assert u1["signal"].tolist() == [3.0, 4.0, -1.0, 5.0, 5.0, 4.0]
    u2 = ds.interactions[ds.interactions["user"] == 1]
    assert u2["item"].tolist() == [4, 5, 0, 1, 2]
    # i99 is absent from items.csv: dropped and counted, not an error
    assert ds.stats["unknown_items"] == 1
    assert ds.stats["duplicates"] == 1
    assert ds.stats["users_dropped"] == 1 and ds.stats["interactions_dropped"] == 3
    assert ds.stats["negatives"] == 1
    assert [p.name for p in ds.sources] == ["interactions.csv", "items.csv"]


def test_csv_without_rating_or_timestamp_uses_file_order(tmp_path: Path) -> None:
    rows = "".join(f"a,i{k}\n" for k in (6, 1, 3, 2, 5)) + "b,i1\n"
    ds = load_dataset("csv", **csv_paths(tmp_path, inter="user,item\n" + rows))
    assert ds.users == ["a"]
    assert ds.interactions["item"].tolist() == [4, 0, 2, 1, 3]
    assert (ds.interactions["signal"] == 1.0).all()


def test_csv_iso_timestamps_and_min_user_items(tmp_path: Path) -> None:
    text = "user,item,timestamp\nz,i2,2020-03-01\nz,i1,2019-12-31T23:00:00\nz,i3,2020-01-15\n"
    ds = load_dataset("csv", min_user_items=3, **csv_paths(tmp_path, inter=text))
    assert ds.interactions["item"].tolist() == [0, 2, 1]
    with pytest.raises(DataError, match=r"interactions\.csv.*no users with >= 4 positive"):
        load_dataset("csv", min_user_items=4, **csv_paths(tmp_path, inter=text))


@pytest.mark.parametrize(
    ("inter", "items", "file", "where"),
    [
        (
            "user,rating\nu,5\n",
            None,
            "interactions.csv",
            "field 'item'.*expected columns user, item",
        ),
        (
            "user,item,rating\nu,i1,5\nu,i2,great\n",
            None,
            "interactions.csv",
            "row 3, field 'rating'.*'great'",
        ),
        ("user,item,rating\nu,i1,nan\n", None, "interactions.csv", "row 2, field 'rating'"),
        (
            "user,item,timestamp\nu,i1,5\nu,i2,yesterday\n",
            None,
            "interactions.csv",
            "row 3, field 'timestamp'",
        ),
        ("user,item\nu,i1\n,i2\n", None, "interactions.csv", "row 3, field 'user'"),
        ("", None, "interactions.csv", "empty"),
        ('user,item\nu,i1,extra,"\n', None, "interactions.csv", "not a readable CSV"),
        (None, "item,name\ni1,x\n", "items.csv", "field 'title'.*expected columns item, title"),
        (None, "item,title\ni1,A\ni1,B\n", "items.csv", "row 3, field 'item'.*twice"),
        (None, "item,title\ni1,™ ®\n", "items.csv", "row 2, field 'title'.*empty"),
        (None, "item,title,genres\ni1,A,\"['x'\"\n", "items.csv", "row 2, field 'genres'"),
    ],
)
def test_csv_malformed_input_names_file_row_and_field(
    tmp_path: Path, inter: str | None, items: str | None, file: str, where: str
) -> None:
    with pytest.raises(DataError, match=where) as err:
        load_dataset("csv", **csv_paths(tmp_path, inter=inter, items=items))
    assert err.value.file is not None and err.value.file.endswith(file)


def test_csv_non_utf8_names_byte_offset_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "interactions.csv"
    bad.write_bytes(b"user,item\nu,i1\nu,caf\xe9\n")
    with pytest.raises(
        DataError,
        match=r"interactions\.csv, row 3: not valid UTF-8 at byte "
        r"offset 20",
    ) as err:
        load_dataset("csv", interactions=bad, items=FIXTURES / "csv" / "items.csv")
    assert err.value.row == 3


def test_csv_accepts_a_byte_order_mark(tmp_path: Path) -> None:
    text = (FIXTURES / "csv" / "interactions.csv").read_text(encoding="utf-8")
    bom = tmp_path / "interactions.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    ds = load_dataset("csv", interactions=bom, items=FIXTURES / "csv" / "items.csv")
    assert ds.users == ["u1", "u2"]


def test_csv_needs_both_paths_and_existing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"interactions=.*items="):
        load_dataset("csv", interactions=FIXTURES / "csv" / "interactions.csv")
    missing = tmp_path / "nope.csv"
    with pytest.raises(
        DataError, match=r"nope\.csv: file not found: check the interactions= and items= paths"
    ):
        load_dataset("csv", interactions=missing, items=FIXTURES / "csv" / "items.csv")


# --- dispatch ------------------------------------------------------------------------------


def test_registry_names_and_dispatch_errors(tmp_path: Path) -> None:
    assert DATASETS == ("steam", "amazon", "csv", "synthetic")
    with pytest.raises(ValueError, match=r"unknown dataset 'movies'.*steam, amazon"):
        load_dataset("movies", data_dir=tmp_path)
    with pytest.raises(DataError, match=rf"{tmp_path / 'steam'}.*BILLP_DATA or pass --data-dir"):
        load_dataset("steam", data_dir=tmp_path)
    (tmp_path / "amazon").mkdir()
    with pytest.raises(DataError, match=r"amazon/users\.json.*file not found.*BILLP_DATA"):
        dataset_sources("amazon", data_dir=tmp_path)


def test_missing_default_data_dir_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("simulator.datasets._default_data_dir", lambda explicit=None: None)
    with pytest.raises(DataError, match=r"no data folder.*BILLP_DATA.*--data-dir"):
        load_dataset("amazon")


def test_synthetic_dispatches_to_generator() -> None:
    from simulator.synthetic import generate

    ds = load_dataset("synthetic", seed=3, n_items=100, n_users=20)
    ref = generate(seed=3, n_items=100, n_users=20)
    assert dataset_sources("synthetic") == []
    assert ds.titles() == ref.titles()
    pd.testing.assert_frame_equal(ds.interactions, ref.interactions)
