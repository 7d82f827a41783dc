"""Which items each user already logged, so that an env can refuse to recommend them.

Why: the ground-truth user model was fit on the logged interactions, so a logged item is an
"exact hit" that rewards echoing the user's history instead of recommending (on Steam a policy
that only replays the log reached R_traj 75 over 16 steps). A real recommender does not re-sell
a game the user owns, so by default (`EnvConfig.logged_items = "exclude"`) every logged item of a
user - positive or negative, since a reviewed game is owned either way - is off limits for them.

Stored as CSR (row pointers + sorted item ids per row): a dense users x items mask of a real
dataset would take hundreds of MB, while a batch of episodes needs only its own rows.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

LoggedItems = Literal["exclude", "allow"]
LOGGED_ITEMS_MODES: tuple[str, ...] = ("exclude", "allow")


def check_mode(mode: str) -> str:
    """Return `mode` if it is a valid `logged_items` setting, else raise a one-line error."""
    if mode not in LOGGED_ITEMS_MODES:
        raise ValueError(f"logged_items must be one of {LOGGED_ITEMS_MODES}, got {mode!r}")
    return mode


@dataclass(frozen=True, eq=False)
class Exclusions:
    """Per row, the items that may never be recommended to that row's user (CSR).

    `ptr[r]:ptr[r + 1]` slices `items` to row r's excluded items, sorted and unique.
    """

    ptr: Tensor
    items: Tensor
    n_items: int

    def __post_init__(self) -> None:
        ptr = torch.as_tensor(self.ptr, dtype=torch.long).reshape(-1)
        items = torch.as_tensor(self.items, dtype=torch.long).reshape(-1)
        if ptr.numel() < 1 or int(ptr[0]) != 0 or int(ptr[-1]) != items.numel():
            raise ValueError("Exclusions: ptr must start at 0 and end at len(items)")
        if bool((ptr[1:] < ptr[:-1]).any()):
            raise ValueError("Exclusions: ptr must be non-decreasing")
        if items.numel() and (int(items.min()) < 0 or int(items.max()) >= self.n_items):
            raise ValueError(f"Exclusions: item ids must lie in [0, {self.n_items})")
        object.__setattr__(self, "ptr", ptr)
        object.__setattr__(self, "items", items)

    @classmethod
    def from_lists(cls, rows: Sequence[Iterable[int]], n_items: int) -> Exclusions:
        """Build from one iterable of item ids per row (duplicates are dropped)."""
        lists = [np.unique(np.fromiter(r, dtype=np.int64)) for r in rows]
        counts = np.array([len(x) for x in lists], dtype=np.int64)
        ptr = np.concatenate([[0], np.cumsum(counts)])
        items = np.concatenate(lists) if lists else np.zeros(0, dtype=np.int64)
        return cls(torch.from_numpy(ptr), torch.from_numpy(items.astype(np.int64)), n_items)

    @classmethod
    def from_interactions(
        cls, interactions: pd.DataFrame, user_ids: Sequence[int], n_items: int
    ) -> Exclusions:
        """Build rows for `user_ids` (in that order) from every interaction they logged."""
        ids = np.asarray(list(user_ids), dtype=np.int64)
        if ids.size == 0:
            return cls(torch.zeros(1, dtype=torch.long), torch.zeros(0, dtype=torch.long), n_items)
        order = np.argsort(ids, kind="stable")
        users = interactions["user"].to_numpy(np.int64)
        items = interactions["item"].to_numpy(np.int64)
        pos = np.searchsorted(ids[order], users).clip(max=ids.size - 1)
        keep = ids[order][pos] == users
        rows, items = order[pos[keep]], items[keep]
        pairs = np.unique(rows * n_items + items)  # sorted by row, then item; duplicates gone
        rows, items = pairs // n_items, pairs % n_items
        ptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(ids)))])
        return cls(torch.from_numpy(ptr), torch.from_numpy(items), n_items)

    @property
    def n_rows(self) -> int:
        return self.ptr.numel() - 1

    @functools.lru_cache(maxsize=1024)  # noqa: B019 (built once per env, kept for life)
    def row(self, r: int) -> frozenset[int]:
        """Return row `r`'s excluded items (asked at every step of that user's episodes)."""
        return frozenset(self.items[int(self.ptr[r]) : int(self.ptr[r + 1])].tolist())

    def _gather(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Return (position in `rows`, item) of every excluded pair of `rows`, and the counts."""
        starts, counts = self.ptr[rows], self.ptr[rows + 1] - self.ptr[rows]
        which = torch.repeat_interleave(torch.arange(rows.numel()), counts)
        offset = torch.arange(which.numel()) - (counts.cumsum(0) - counts)[which]
        return which, self.items[starts[which] + offset], counts

    def subset(self, rows: Tensor | Sequence[int]) -> Exclusions:
        """Return the exclusions of `rows` only, in that order (e.g. one split's users)."""
        rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        _, items, counts = self._gather(rows)
        ptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        return Exclusions(ptr, items, self.n_items)

    def mask(self, rows: Tensor | Sequence[int]) -> Tensor:
        """Return a [len(rows), n_items] bool mask, True where the row's user logged the item."""
        rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        out = torch.zeros(rows.numel(), self.n_items, dtype=torch.bool)
        which, items, _ = self._gather(rows)
        out[which, items] = True
        return out


def logged_error(user: int, item: int) -> str:
    """Return the one-line refusal of recommending a user's own logged item."""
    return (
        f"item {item} is in user {user}'s logged history and logged_items='exclude' forbids "
        "recommending it (skip logged items, or build the env with logged_items='allow')"
    )
