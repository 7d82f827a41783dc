"""Load a dataset by name into the one normalized `Dataset` form every later stage reads.

Loaders only turn raw files into time-ordered events `(user, item, signal)` plus a title and a
genre list per source item id; `assemble` then does what every dataset needs the same way:
drop duplicated pairs, drop events on items with no catalogue entry, keep users with enough
positives, and map ids to dense integers. Each drop is counted in `Dataset.stats`, so a report can
say what loading threw away.

Row numbers in errors: for CSV files they are file line numbers (header = line 1); for JSON and
parquet files they are 0-based record positions.
"""

from __future__ import annotations

import ast
import functools
import html
import io
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simulator.paths import data_dir as _default_data_dir
from simulator.types import DataError, Dataset

DATASETS: tuple[str, ...] = ("steam", "amazon", "csv", "synthetic")

_MARK_CHARS = frozenset("™®©")
_MARKS = str.maketrans("", "", "™®©")
_TAG = re.compile(r"<[^>]*>")


MAX_TITLE_CHARS = 300
"""Longer titles are refused: agents must be able to read and write an item's title."""


def normalize_title(text: str) -> str:
    """Return `text` unescaped, without trademark marks and with single spaces; case is kept.

    Titles are what the LLM reads and what grounding matches against, so the same game must
    always read the same: `&amp;amp;` (escaped twice upstream) and `™` variants would otherwise
    split one title into several.
    """
    if not isinstance(text, str) or not text:
        return ""
    # Until nothing changes, so the result is a fixed point (normalizing twice changes nothing)
    # even for `&amp;amp;amp;...` or a mark inside an entity (`&am™p;`). Every change shortens
    # the text (an entity is longer than what it stands for), so the loop ends.
    while True:
        cleaned = html.unescape(text) if "&" in text else text
        if _MARK_CHARS.intersection(cleaned):
            cleaned = cleaned.translate(_MARKS)
        if cleaned == text:
            break
        text = cleaned
    return " ".join(text.split())


def parse_genres(value: Any) -> list[str]:
    """Return the genres in `value` as normalized, de-duplicated strings in their given order.

    Accepts a list, a Python-literal list string such as `"['Action', 'Indie']"` (parsed with
    `ast.literal_eval`, never `eval`), a `|`-separated string, or None/NaN (no genres). HTML tags
    left over from scraping (`</span>`) are removed. Raises ValueError when a literal list string
    cannot be parsed or holds something other than strings, so callers can name the bad row.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return list(_parse_genre_text(value))
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list | tuple):
        raise ValueError(f"genres must be a list or a string, got {type(value).__name__}")
    return list(_clean_genres(tuple(value)))


@functools.lru_cache(maxsize=65536)
def _parse_genre_text(text: str) -> tuple[str, ...]:
    # cached: catalogues repeat the same few thousand genre strings across many items
    text = text.strip()
    if text.startswith("["):  # a list literal, possibly truncated: never split it on "|"
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            raise ValueError(f"not a valid genre list literal: {text[:80]!r}") from exc
        if not isinstance(value, list | tuple):
            raise ValueError(f"not a genre list: {text[:80]!r}")
        return _clean_genres(tuple(value))
    return _clean_genres(tuple(text.split("|")))


def _clean_genres(entries: tuple[Any, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for entry in entries:
        if not isinstance(entry, str):
            raise ValueError(f"genre entries must be strings, got {entry!r}")
        genre = _clean_genre(entry)
        if genre and genre not in out:
            out.append(genre)
    return tuple(out)


@functools.lru_cache(maxsize=65536)
def _clean_genre(entry: str) -> str:
    return normalize_title(_TAG.sub(" ", normalize_title(entry)))


def load_dataset(name: str, data_dir: str | Path | None = None, **options: Any) -> Dataset:
    """Load dataset `name` (one of DATASETS) from `data_dir` (default `simulator.paths.data_dir()`).

    Options go to the loader: `min_user_items` (steam, amazon, csv), `interactions` and `items`
    (csv paths; `data_dir` is not used for csv), `seed`, `n_items`, `n_users` (synthetic).
    Raises DataError for missing or bad files, ValueError for an unknown name.
    """
    if name == "synthetic":
        from simulator.synthetic import generate  # lazy: only this dataset needs it

        return generate(**options)
    loader, _ = _registry(name)
    return loader(_root(name, data_dir), **options)


def dataset_sources(name: str, data_dir: str | Path | None = None, **options: Any) -> list[Path]:
    """Return the input files dataset `name` reads, so a cache can checksum them without loading.

    Raises DataError naming the first missing file. The synthetic dataset reads no files.
    """
    if name == "synthetic":
        return []
    _, sources = _registry(name)
    return sources(_root(name, data_dir), **options)


def _registry(name: str) -> tuple[Callable[..., Dataset], Callable[..., list[Path]]]:
    from simulator import real_data  # lazy: real_data imports the helpers below

    table = {
        "steam": (real_data.load_steam, real_data.steam_sources),
        "amazon": (real_data.load_amazon, real_data.amazon_sources),
        "csv": (_load_csv, _csv_sources),
    }
    if name not in table:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return table[name]


def _root(name: str, data_dir: str | Path | None) -> Path | None:
    """Return the dataset's folder (None for csv, whose paths are options)."""
    if name == "csv":
        return None
    root = _default_data_dir(data_dir)
    if root is None:
        raise DataError(
            f"no data folder found for dataset {name!r}: set BILLP_DATA or pass --data-dir "
            "(or use the 'synthetic' dataset)"
        )
    folder = root / name
    if not folder.is_dir():
        raise DataError(
            f"data folder {folder} does not exist: set BILLP_DATA or pass --data-dir "
            f"pointing at the folder that holds '{name}/'",
            file=folder,
        )
    return folder


def require_files(
    paths: list[Path],
    fix: str = "set BILLP_DATA or pass --data-dir pointing at the data folder",
) -> list[Path]:
    """Return `paths` unchanged, or raise DataError naming the first one that is not a file."""
    for path in paths:
        if not path.is_file():
            raise DataError(f"file not found: {fix}", file=path)
    return paths


def read_text(path: Path) -> str:
    """Return the file's text, raising DataError with the byte offset and line of bad UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")  # a BOM, as Excel writes, is fine
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"not valid UTF-8 at byte offset {exc.start}; re-save the file as UTF-8",
            file=path,
            row=line,
        ) from exc


def read_csv(path: Path, required: list[str], optional: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a UTF-8 CSV as strings, checking that `required` columns exist.

    Every cell stays a string (no NA guessing) so each loader converts and reports bad values
    itself, with their row.
    """
    text = read_text(path)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError as exc:
        raise DataError("file is empty; expected a header row", file=path) from exc
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataError(f"not a readable CSV file: {exc}", file=path) from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        expected = ", ".join([*required, *(f"[{c}]" for c in optional)])
        raise DataError(
            f"missing column(s) {', '.join(missing)}; expected columns {expected}",
            file=path,
            field=missing[0],
        )
    return frame


def to_numbers(values: pd.Series, path: Path, field: str, row_base: int) -> np.ndarray:
    """Return `values` as finite floats; raise DataError at the first row that is not a number.

    `row_base` is added to the 0-based position to give the row number the error reports.
    """
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    bad = np.flatnonzero(~np.isfinite(numbers))
    if bad.size:
        pos = int(bad[0])
        raise DataError(
            f"expected a number, got {values.iloc[pos]!r}",
            file=path,
            row=pos + row_base,
            field=field,
        )
    return numbers


def _id_key(source_id: str) -> tuple[int, int, str]:
    # numeric ids sort as numbers so the catalogue follows the source's own id order
    numeric = source_id.isascii() and source_id.isdigit()
    return (0, int(source_id), "") if numeric else (1, 0, source_id)


def assemble(
    name: str,
    events: pd.DataFrame,
    titles: Mapping[str, str],
    genres: Mapping[str, list[str]],
    *,
    min_user_items: int,
    stats: dict[str, int],
    sources: list[Path],
    origin: Path,
) -> Dataset:
    """Turn time-ordered `events` (user, item: source ids as str; signal: float) into a Dataset.

    Row order is time order within each user. Repeated (user, item) pairs keep their first row;
    events on items missing from `titles` (or with an empty title) are dropped; users with fewer
    than `min_user_items` positive events are dropped. `origin` is the file an empty result is
    blamed on.
    """
    if min_user_items < 1:
        raise ValueError(f"min_user_items must be >= 1, got {min_user_items}")
    stats = dict(stats)
    stats.setdefault("rows_read", len(events))
    # integer codes keep every step vectorized: string ops on 200k rows cost seconds
    user_codes, user_ids = pd.factorize(events["user"])
    item_codes, item_ids = pd.factorize(events["item"])
    user_ids, item_ids = [str(u) for u in user_ids], [str(i) for i in item_ids]
    signal = events["signal"].to_numpy(dtype=np.float64)

    pair = user_codes.astype(np.int64) * len(item_ids) + item_codes
    fresh = ~pd.Series(pair).duplicated(keep="first").to_numpy()
    stats["duplicates"] = stats.get("duplicates", 0) + int((~fresh).sum())

    titled = np.array([bool(titles.get(i)) for i in item_ids], dtype=bool)
    known = fresh & titled[item_codes]
    stats["unknown_items"] = stats.get("unknown_items", 0) + int((fresh & ~known).sum())

    positives = np.bincount(user_codes[known & (signal > 0)], minlength=len(user_ids))
    keep_user = positives >= min_user_items
    kept = known & keep_user[user_codes]
    stats["users_dropped"] = int(len(np.unique(user_codes[known])) - keep_user.sum())
    stats["interactions_dropped"] = int((known & ~kept).sum())
    if not kept.any():
        raise DataError(
            f"no users with >= {min_user_items} positive items after filtering; "
            "lower min_user_items or check the file",
            file=origin,
        )

    new_user = np.cumsum(keep_user) - 1  # first-appearance order among kept users
    used = np.unique(item_codes[kept])
    ranked = sorted(used.tolist(), key=lambda c: _id_key(item_ids[c]))
    new_item = np.full(len(item_ids), -1, dtype=np.int64)
    new_item[ranked] = np.arange(len(ranked), dtype=np.int64)
    interactions = pd.DataFrame(
        {
            "user": new_user[user_codes[kept]].astype(np.int64),
            "item": new_item[item_codes[kept]],
            "signal": signal[kept],
        }
    )
    interactions["order"] = interactions.groupby("user", sort=False).cumcount().astype(np.int64)
    interactions = interactions.sort_values(["user", "order"], kind="stable", ignore_index=True)

    source_ids = [item_ids[c] for c in ranked]
    item_titles = [titles[i] for i in source_ids]
    items = pd.DataFrame(
        {
            "item": np.arange(len(ranked), dtype=np.int64),
            "title": item_titles,
            "genres": pd.Series([list(genres.get(i, [])) for i in source_ids], dtype=object),
        }
    )
    stats["items_without_genres"] = int(sum(not g for g in items["genres"]))
    stats["duplicate_titles"] = len(item_titles) - len(set(item_titles))
    stats["negatives"] = int((interactions["signal"] < 0).sum())
    users = [u for u, keep in zip(user_ids, keep_user, strict=True) if keep]
    return Dataset(
        name=name,
        items=items,
        interactions=interactions,
        users=users,
        stats=stats,
        sources=list(sources),
    )


def _csv_sources(
    _root: Path | None,
    interactions: str | Path | None = None,
    items: str | Path | None = None,
    **_: Any,
) -> list[Path]:
    if interactions is None or items is None:
        raise DataError(
            "the csv dataset needs options interactions=<path to user,item[,rating][,timestamp] "
            "CSV> and items=<path to item,title[,genres] CSV>"
        )
    return require_files(
        [Path(interactions).expanduser(), Path(items).expanduser()],
        fix="check the interactions= and items= paths",
    )


def _load_csv(
    _root: Path | None,
    interactions: str | Path | None = None,
    items: str | Path | None = None,
    min_user_items: int = 5,
) -> Dataset:
    """Load a generic `user,item[,rating][,timestamp]` + `item,title[,genres]` CSV pair.

    Ratings >= 3 are positives with strength = rating; ratings < 3 are explicit negatives (-1);
    without a rating column every row is a positive of strength 1. Order is by timestamp (numbers
    or date strings) when present, else file order. Interactions on item ids absent from the items
    CSV are dropped and counted as `unknown_items`, since catalogues are often trimmed on purpose.
    """
    inter_path, items_path = _csv_sources(None, interactions, items)

    catalogue = read_csv(items_path, ["item", "title"], ("genres",))
    ids = catalogue["item"].str.strip()
    titles: dict[str, str] = {}
    genres: dict[str, list[str]] = {}
    has_genres = "genres" in catalogue.columns
    for pos, source in enumerate(ids):
        row = pos + 2
        if not source:
            raise DataError("empty item id", file=items_path, row=row, field="item")
        if source in titles:
            raise DataError(
                f"item id {source!r} appears twice; item ids must be unique",
                file=items_path,
                row=row,
                field="item",
            )
        title = normalize_title(catalogue["title"].iat[pos])
        if not title:
            raise DataError("empty title", file=items_path, row=row, field="title")
        if len(title) > MAX_TITLE_CHARS:
            raise DataError(
                f"title is {len(title):,} characters long; at most {MAX_TITLE_CHARS} are allowed "
                "(a longer one cannot fit in an agent's prompt)",
                file=items_path,
                row=row,
                field="title",
            )
        titles[source] = title
        if has_genres:
            try:
                genres[source] = parse_genres(catalogue["genres"].iat[pos])
            except ValueError as exc:
                raise DataError(str(exc), file=items_path, row=row, field="genres") from exc

    frame = read_csv(inter_path, ["user", "item"], ("rating", "timestamp"))
    events = pd.DataFrame({"user": frame["user"].str.strip(), "item": frame["item"].str.strip()})
    for column in ("user", "item"):
        empty = np.flatnonzero((events[column] == "").to_numpy())
        if empty.size:
            raise DataError(
                f"empty {column} id", file=inter_path, row=int(empty[0]) + 2, field=column
            )
    if "rating" in frame.columns:
        rating = to_numbers(frame["rating"], inter_path, "rating", row_base=2)
        events["signal"] = np.where(rating >= 3, rating, -1.0)
    else:
        events["signal"] = 1.0
    if "timestamp" in frame.columns:
        # users keep their first-appearance order; only each user's own rows are re-ordered
        events["rank"] = pd.factorize(events["user"])[0]
        events["time"] = _timestamps(frame["timestamp"], inter_path)
        events = events.sort_values(["rank", "time"], kind="stable")
    stats = {"rows_read": len(frame), "items_in_catalogue": len(titles)}
    return assemble(
        "csv",
        events,
        titles,
        genres,
        min_user_items=min_user_items,
        stats=stats,
        sources=[inter_path, items_path],
        origin=inter_path,
    )


def _timestamps(values: pd.Series, path: Path) -> np.ndarray:
    """Return sortable times: numbers, or ISO dates as nanoseconds, as the first row decides.

    One kind per column: mixing epoch numbers with dates would order rows meaninglessly.
    """
    if pd.notna(pd.to_numeric(values.iloc[:1], errors="coerce")).all():
        return to_numbers(values, path, "timestamp", row_base=2)
    parsed = pd.to_datetime(values, errors="coerce", format="ISO8601", utc=True)
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if bad.size:
        pos = int(bad[0])
        raise DataError(
            f"expected an ISO date like the first row's, got {values.iloc[pos]!r}",
            file=path,
            row=pos + 2,
            field="timestamp",
        )
    return (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=float)
