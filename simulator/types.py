"""The normalized dataset form every loader returns and every later stage reads.

Keeping one small, explicit shape here is what lets a new dataset plug in by writing only a
loader: the user model, the environments and the policies never look at raw files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


class DataError(ValueError):
    """A dataset file is missing, malformed or empty; the message names file, row and field."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.row = row
        self.field = field
        where = []
        if self.file:
            where.append(self.file)
        if row is not None:
            where.append(f"row {row}")
        if field:
            where.append(f"field {field!r}")
        super().__init__(f"{': '.join([', '.join(where), message]) if where else message}")


@dataclass
class Dataset:
    """One catalogue and its logged interactions, with dense integer ids.

    `items` has one row per item, indexed 0..n_items-1, with columns
    `item` (int, == index), `title` (str, normalized) and `genres` (list[str]).
    `interactions` has columns `user` (int, 0..n_users-1), `item` (int),
    `signal` (float: > 0 a positive with that strength, < 0 an explicit negative) and
    `order` (int, the interaction's position in that user's time order, 0 = oldest).
    `users` maps dense user ids back to the source's user ids (as strings).
    `stats` counts what loading dropped or repaired (duplicates, unknown items, ...).
    `sources` lists the input files, so a cache can key on their checksums.
    """

    name: str
    items: pd.DataFrame
    interactions: pd.DataFrame
    users: list[str]
    stats: dict[str, int] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_users(self) -> int:
        return len(self.users)

    def titles(self) -> list[str]:
        return self.items["title"].tolist()
