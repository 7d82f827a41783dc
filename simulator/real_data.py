"""Read the Steam and Amazon-Book files in `../shared/data` into events, titles and genres.

Both loaders hand their events to `simulator.datasets.assemble`, which de-duplicates, filters
and maps ids to dense integers the same way for every dataset.

Steam signal rules (implicit feedback has no rating, so we define one):
- a played game is a positive of strength `1 + log1p(hours played)` (>= 1);
- an owned but never played game is a weak positive, `UNPLAYED_SIGNAL` = 0.5: buying it was a
  choice, but a weaker one than any play time;
- a review of an owned game: recommend=True adds `REVIEW_BONUS` (1) to the library strength;
  recommend=False overrides it with -1, since an explicit verdict beats hours played;
- a review of a game not in the library: True is a positive of strength 2 (it was played enough
  to review and liked), False is an explicit negative (-1).
Steam time order: libraries carry no time, so each user's library games come first in file order,
then their review-only games by posting date (file order on ties). A posting date without a year
("Posted February 3.") is from the crawl year, which Steam leaves implicit: it is later than every
explicit year, so we take the latest explicit year in the file + 1.
"""

from __future__ import annotations

import ast
import calendar
import gzip
import json
import re
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from simulator.datasets import (
    assemble,
    normalize_title,
    parse_genres,
    read_csv,
    read_text,
    require_files,
    to_numbers,
)
from simulator.types import DataError, Dataset

STEAM_FILES = (
    "australian_users_items.parquet",
    "user_reviews.csv",
    "steam_games.json.gz",
    "billp_list_genre.json",
)
AMAZON_FILES = ("users.json", "datamaps.json", "list_genre.json")

UNPLAYED_SIGNAL = 0.5
REVIEW_BONUS = 1.0
REVIEW_ONLY_SIGNAL = 2.0

_LIBRARY_COLUMNS = ["user_id", "item_id", "item_name", "playtime_forever"]
_REVIEW_COLUMNS = ["user_id", "posted", "item_id", "recommend"]
_POSTED = re.compile(r"^\s*Posted\s+([A-Za-z]+)\s+(\d{1,2})(?:,\s*(\d{4}))?\.?\s*$")
_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_name) if name}
# starts with a literal so `re` can scan 38 MB fast; the quote before `id` is checked per match
_META_ID = re.compile(r"""id["']\s*:\s*["']?(\d+)""")
_BARE_NAN = re.compile(r"(?<=[:\[,])\s*NaN(?=\s*[,}\]])")


def steam_sources(root: Path, **_: Any) -> list[Path]:
    """Return the Steam input files under `root`, raising DataError naming a missing one."""
    return require_files([root / name for name in STEAM_FILES])


def amazon_sources(root: Path, **_: Any) -> list[Path]:
    """Return the Amazon input files under `root`, raising DataError naming a missing one."""
    return require_files([root / name for name in AMAZON_FILES])


def load_steam(root: Path, min_user_items: int = 5) -> Dataset:
    """Load Steam libraries and reviews under `root`; see the module docstring for signal rules."""
    lib_path, rev_path, meta_path, genre_path = steam_sources(root)
    library = _read_library(lib_path)
    reviews = _read_reviews(rev_path)
    stats = {
        "rows_read": len(library) + len(reviews),
        "library_rows": len(library),
        "review_rows": len(reviews),
        "unplayed": int((library["signal"] == UNPLAYED_SIGNAL).sum()),
        "review_dates_without_year": int(reviews.attrs["no_year"]),
    }
    # one integer key per (user, item) pair, shared by both files, keeps the merge vectorized
    users = pd.factorize(pd.concat([library["user"], reviews["user"]], ignore_index=True))[0]
    items, item_ids = pd.factorize(pd.concat([library["item"], reviews["item"]], ignore_index=True))
    pair = users.astype(np.int64) * len(item_ids) + items
    lib_pair, rev_pair = pair[: len(library)], pair[len(library) :]
    dup_lib = pd.Series(lib_pair).duplicated().to_numpy()
    dup_rev = pd.Series(rev_pair).duplicated().to_numpy()
    stats["duplicates"] = int(dup_lib.sum() + dup_rev.sum())
    library = library.loc[~dup_lib].reset_index(drop=True)
    reviews = reviews.loc[~dup_rev].reset_index(drop=True)
    lib_pair, rev_pair = lib_pair[~dup_lib], rev_pair[~dup_rev]

    in_lib = np.isin(rev_pair, lib_pair)
    at = pd.Index(rev_pair[in_lib]).get_indexer(lib_pair)  # the review of each library row, or -1
    liked = np.asarray(reviews["recommend"], dtype=bool)[in_lib]
    verdict = np.zeros(len(library), dtype=np.int64)  # +1 liked, -1 disliked, 0 not reviewed
    verdict[at >= 0] = np.where(liked[at[at >= 0]], 1, -1)
    library["signal"] = np.where(
        verdict > 0,
        library["signal"] + REVIEW_BONUS,
        np.where(verdict < 0, -1.0, library["signal"]),
    )
    stats["reviews_merged"] = int(in_lib.sum())
    stats["negative_overrides"] = int((verdict < 0).sum())

    extra = reviews.loc[~in_lib].copy()
    extra["signal"] = np.where(extra["recommend"], REVIEW_ONLY_SIGNAL, -1.0)
    events = pd.concat(
        [library[["user", "item", "signal"]], extra[["user", "item", "signal", "date"]]],
        ignore_index=True,
    )
    # users keep first-appearance order (library, then reviews); review rows follow by date
    events["rank"] = pd.factorize(events["user"])[0]
    events["date"] = events["date"].fillna(-1)
    events = events.sort_values(["rank", "date"], kind="stable", ignore_index=True)

    needed = set(events["item"].unique().tolist())
    names, genres, stats["genre_lines_skipped"] = _read_game_meta(meta_path, needed)
    named = library.loc[library["name"] != ""].drop_duplicates("item")
    titles = dict(zip(named["item"], named["name"], strict=True))
    titles = {i: titles.get(i) or names.get(i, "") for i in needed}
    untagged = [i for i in needed if not genres.get(i) and titles[i]]
    by_title, stats["genre_entries_skipped"] = _read_genre_map(
        genre_path, {titles[i].casefold() for i in untagged}
    )
    for item in untagged:
        genres[item] = by_title.get(titles[item].casefold(), [])
    return assemble(
        "steam",
        events,
        titles,
        genres,
        min_user_items=min_user_items,
        stats=stats,
        sources=[lib_path, rev_path, meta_path, genre_path],
        origin=lib_path,
    )


def _per_value(
    values: pd.Series,
    convert: Callable[[Any], Any],
    path: Path,
    row_base: int,
    field: str,
    want: str,
) -> np.ndarray:
    """Apply `convert` once per distinct value (None = invalid) and spread the results to rows.

    Ids and dates repeat heavily, so this costs a few thousand calls instead of 200k.
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    results = np.empty(len(uniques), dtype=object)
    results[:] = [convert(v) for v in uniques]
    bad = np.flatnonzero(pd.isna(results)[codes])
    if bad.size:
        pos = int(bad[0])
        raise DataError(
            f"expected {want}, got {values.iloc[pos]!r}", file=path, row=pos + row_base, field=field
        )
    return results[codes]


def _app_id(value: Any) -> str | None:
    """Return a Steam app id as a canonical digit string (`"0010"`, `10`, `10.0` -> `"10"`)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip().removesuffix(".0") if isinstance(value, str | int) else ""
    return (text.lstrip("0") or "0") if text.isascii() and text.isdigit() else None


def _user_id(value: Any) -> str | None:
    return (str(value).strip() or None) if isinstance(value, str | int) else None


def _posted(value: Any) -> tuple[float, int, int] | None:
    """Return (year or NaN, month, day) from 'Posted November 5, 2011.' (the year may be absent)."""
    match = _POSTED.match(value) if isinstance(value, str) else None
    if match is None or match.group(1).lower() not in _MONTHS or not 1 <= int(match.group(2)) <= 31:
        return None
    year = float(match.group(3)) if match.group(3) else float("nan")
    return (year, _MONTHS[match.group(1).lower()], int(match.group(2)))


def _read_library(path: Path) -> pd.DataFrame:
    """Return library rows as (user, item, name, signal) in file order."""
    try:
        names = pq.read_schema(path).names
        missing = [c for c in _LIBRARY_COLUMNS if c not in names]
        if missing:
            raise DataError(
                f"missing column(s) {', '.join(missing)}; expected columns "
                f"{', '.join(_LIBRARY_COLUMNS)}",
                file=path,
                field=missing[0],
            )
        raw = pd.read_parquet(path, columns=_LIBRARY_COLUMNS)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"not a readable parquet file: {exc}", file=path) from exc
    minutes = to_numbers(raw["playtime_forever"], path, "playtime_forever", row_base=0)
    negative = np.flatnonzero(minutes < 0)
    if negative.size:
        raise DataError(
            f"negative play time {minutes[negative[0]]}; expected minutes >= 0",
            file=path,
            row=int(negative[0]),
            field="playtime_forever",
        )
    return pd.DataFrame(
        {
            "user": _per_value(raw["user_id"], _user_id, path, 0, "user_id", "a user id"),
            "item": _per_value(raw["item_id"], _app_id, path, 0, "item_id", "a numeric app id"),
            "name": _per_value(raw["item_name"], _name, path, 0, "item_name", "a title"),
            "signal": np.where(minutes > 0, 1.0 + np.log1p(minutes / 60.0), UNPLAYED_SIGNAL),
        }
    )


def _name(value: Any) -> str:
    # a missing name is not an error: steam_games may still name the game
    return normalize_title(value) if isinstance(value, str) else ""


def _read_reviews(path: Path) -> pd.DataFrame:
    """Return reviews as (user, item, recommend, date) in file order; `date` sorts as YYYYMMDD."""
    raw = read_csv(path, _REVIEW_COLUMNS)
    flags = {"true": True, "1": True, "false": False, "0": False}
    liked = _per_value(
        raw["recommend"],
        lambda v: flags.get(v.strip().lower()),
        path,
        2,
        "recommend",
        "True or False",
    )
    dates = _per_value(
        raw["posted"], _posted, path, 2, "posted", "a date like 'Posted November 5, 2011.'"
    )
    year, month, day = (np.array([d[k] for d in dates], dtype=float) for k in range(3))
    no_year = np.isnan(year)
    year[no_year] = np.nanmax(year) + 1 if not no_year.all() else 0
    frame = pd.DataFrame(
        {
            "user": _per_value(raw["user_id"], _user_id, path, 2, "user_id", "a user id"),
            "item": _per_value(raw["item_id"], _app_id, path, 2, "item_id", "a numeric app id"),
            "recommend": liked.astype(bool),
            "date": (year * 10000 + month * 100 + day).astype(np.int64),
        }
    )
    frame.attrs["no_year"] = int(no_year.sum())
    return frame


def _read_game_meta(path: Path, needed: set[str]) -> tuple[dict[str, str], dict[str, list], int]:
    """Return names and genres (falling back to tags) of the `needed` Steam ids in steam_games.

    One regex pass over the whole text finds each line's id, so the ~88k all-NaN rows (which
    have no id) and games nobody played are never parsed. Genres are optional, so a corrupt line
    is skipped and counted, not fatal.
    """
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"not a readable gzip file: {exc}", file=path) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"not valid UTF-8 at byte offset {exc.start} of the decompressed text",
            file=path,
            row=data.count(b"\n", 0, exc.start) + 1,
        ) from exc
    names: dict[str, str] = {}
    genres: dict[str, list[str]] = {}
    skipped = 0
    for match in _META_ID.finditer(text):
        item = match.group(1).lstrip("0") or "0"
        if item not in needed or text[match.start() - 1 : match.start()] not in ("'", '"'):
            continue
        if text[match.start() - 2 : match.start() - 1] not in ("{", ",", " ", "\t"):
            continue  # a key that merely ends in "id", such as "app_id"
        start = text.rfind("\n", 0, match.start()) + 1
        end = text.find("\n", match.end())
        record = _parse_meta_line(text[start : end if end >= 0 else len(text)])
        if record is None:
            skipped += 1
            continue
        name = record.get("app_name") or record.get("title")
        if isinstance(name, str) and not names.get(item):
            names[item] = normalize_title(name)
        try:
            found = parse_genres(record.get("genres")) or parse_genres(record.get("tags"))
        except ValueError:
            skipped += 1
            continue
        if found and not genres.get(item):
            genres[item] = found
    return names, genres, skipped


def _parse_meta_line(line: str) -> dict | None:
    """Parse one steam_games line: JSON with bare NaN, or a Python dict literal; None if broken."""
    try:
        record = json.loads(line)
    except ValueError:
        try:
            record = ast.literal_eval(_BARE_NAN.sub(" None", line.strip()))
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
    return record if isinstance(record, dict) else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", file=path
        ) from exc


def _read_genre_map(path: Path, wanted: set[str]) -> tuple[dict[str, list[str]], int]:
    """Return genres keyed by casefolded normalized title, for the `wanted` keys only.

    The file maps title -> genre-list literal; only wanted entries are parsed (the Steam map has
    28k), and a malformed entry is skipped and counted since genres are optional.
    """
    mapping = _read_json(path)
    if not isinstance(mapping, dict):
        raise DataError(
            f"expected a JSON object title -> genre list, got {type(mapping).__name__}", file=path
        )
    out: dict[str, list[str]] = {}
    skipped = 0
    for title, value in mapping.items():
        key = normalize_title(title).casefold()
        if key not in wanted or out.get(key):
            continue
        try:
            out[key] = parse_genres(value)
        except ValueError:
            skipped += 1
    return out, skipped


def load_amazon(root: Path, min_user_items: int = 5) -> Dataset:
    """Load the BiLLP Amazon-Book histories under `root`: all positives, in history order."""
    users_path, maps_path, genre_path = amazon_sources(root)
    item2id = _read_datamaps(maps_path)
    records = _read_json(users_path)
    if not isinstance(records, list):
        raise DataError(
            f"expected a JSON list of user records, got {type(records).__name__}", file=users_path
        )
    users: list[str] = []
    items: list[str | None] = []
    seen: set[str] = set()
    for row, record in enumerate(records):
        user, history = _amazon_record(record, users_path, row)
        if user in seen:
            raise DataError(
                f"user {user!r} appears twice; each user needs exactly one record",
                file=users_path,
                row=row,
                field="userid_encoded",
            )
        seen.add(user)
        users.extend([user] * len(history))
        items.extend(item2id.get(title) for title in history)
    events = pd.DataFrame({"user": users, "item": items, "signal": 1.0})
    known = events["item"].notna().to_numpy()
    stats = {"rows_read": len(events), "unknown_items": int((~known).sum())}
    events = events.loc[known].reset_index(drop=True)

    titles = {item: normalize_title(title) for title, item in item2id.items()}
    used = set(events["item"])
    by_title, stats["genre_entries_skipped"] = _read_genre_map(
        genre_path, {titles[i].casefold() for i in used}
    )
    genres = {i: by_title.get(titles[i].casefold(), []) for i in used}
    return assemble(
        "amazon",
        events,
        titles,
        genres,
        min_user_items=min_user_items,
        stats=stats,
        sources=[users_path, maps_path, genre_path],
        origin=users_path,
    )


def _read_datamaps(path: Path) -> dict[str, str]:
    """Return raw title -> source item id (as str) from datamaps.json's item2id_dict."""
    maps = _read_json(path)
    table = maps.get("item2id_dict") if isinstance(maps, dict) else None
    if not isinstance(table, dict):
        raise DataError(
            "expected an object with an 'item2id_dict' object", file=path, field="item2id_dict"
        )
    out: dict[str, str] = {}
    for row, (title, item) in enumerate(table.items()):
        if isinstance(item, bool) or not isinstance(item, int | str) or not str(item).strip():
            raise DataError(
                f"expected an integer item id for title {title!r}, got {item!r}",
                file=path,
                row=row,
                field="item2id_dict",
            )
        out[title] = str(item).strip()
    return out


def _amazon_record(record: Any, path: Path, row: int) -> tuple[str, list[str]]:
    """Validate one users.json record and return (user id, title history)."""
    if not isinstance(record, dict):
        raise DataError(f"expected an object, got {type(record).__name__}", file=path, row=row)
    for field in ("userid_encoded", "pos_seq_name"):
        if field not in record:
            raise DataError(
                "missing field; expected fields userid_encoded, pos_seq_name",
                file=path,
                row=row,
                field=field,
            )
    user = record["userid_encoded"]
    if isinstance(user, bool) or not isinstance(user, int | str) or not str(user).strip():
        raise DataError(
            f"expected a user id, got {user!r}", file=path, row=row, field="userid_encoded"
        )
    history = record["pos_seq_name"]
    if not isinstance(history, list) or not all(isinstance(t, str) for t in history):
        raise DataError(
            f"expected a list of titles, got {str(history)[:80]}",
            file=path,
            row=row,
            field="pos_seq_name",
        )
    return str(user).strip(), history
