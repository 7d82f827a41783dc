"""Read the reference BiLLP's own GPT-3.5 run logs and map them onto one of our datasets.

Why: the reference never published its rating or distance matrices; its logs are the only record
of how its simulator judged anything. Replaying their executed items through our simulator
(`simulator.validate`) measures how far ours is from theirs. The logs are a *judge* only: no
rating read here may ever be fed into a model.

An episode's `traj_by_line` holds: one "The user's viewing history is [...]" line (a Python list
literal, parsed with `ast.literal_eval`), "Thought t: ..." lines (ignored), and per step t an
"Action t: recommend[Title]", optionally "Observation t: [Title] can not be recommened, instead,
recommend[Other]" (`Other` is what was executed), then "Observation t: Episode continue,
reward=r" or "Observation t: Episode finished, User Stop, reward=-1000" (the user left on that
item). An episode without the stop line was cut by the step limit.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from simulator.datasets import normalize_title, read_text
from simulator.types import DataError, Dataset

MIN_HISTORY_SHARE = 0.8
"""A user mapping is accepted only when at least this share of the shown history titles (those
that map to our catalogue) are in that user's logged items: an id that collides with another
user's (the Amazon training users are not in users.json, yet some of their ids exist there) has
a share near 0, a true match near 1."""
MIN_HISTORY_TITLES = 3
"""Matching by history alone (Steam) needs this many shown titles that map: with one or two,
many users tie and a "unique best" is luck."""
MIN_MATCH_MARGIN = 2
"""...and the best user must hold this many more of them than the runner-up. Shown Steam
histories are mostly popular games, which large libraries all hold: a best of 4 of 4 against a
runner-up of 3 identifies nobody."""

UserMatchMethod = Literal["id", "history"]

_ACTION = re.compile(r"Action (\d+): recommend\[(.*)\]\s*", re.S)
_REPLACED = re.compile(
    r"Observation (\d+): \[(.*)\] can not be recommen(?:e|de)d, instead, recommend\[(.*)\]\s*", re.S
)
_CONTINUE = re.compile(r"Observation (\d+): Episode continue, reward=(\S+)\s*")
_STOP = re.compile(r"Observation (\d+): Episode finished, User Stop, reward=(\S+)\s*")
_HISTORY = "The user's viewing history is "
_MARK_WORDS = re.compile(r"\((?:tm|r|c)\)")


@dataclass(frozen=True, slots=True)
class RefStep:
    """One recommendation of a reference episode."""

    t: int
    asked: str
    """The title the agent asked for."""
    executed: str
    """The title actually recommended (the grounding's replacement when `replaced`)."""
    replaced: bool
    reward: float | None
    """The reference user's rating when they stayed; None on the step they left on."""
    quit: bool


@dataclass(frozen=True)
class RefEpisode:
    """One logged episode: who, what they were shown, and what happened step by step."""

    source: str
    """The log file's name."""
    key: str
    userid: str
    history: tuple[str, ...]
    steps: tuple[RefStep, ...]
    ended_by: Literal["stop", "limit"]

    @property
    def length(self) -> int:
        """Len as the reference counts it: accepted steps (the quitting step is not counted)."""
        return sum(not s.quit for s in self.steps)

    @property
    def r_traj(self) -> float:
        """R_traj: the sum of ratings of accepted steps."""
        return float(sum(s.reward or 0.0 for s in self.steps if not s.quit))


def _number(text: str, where: str, source: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{where}: reward {text!r} is not a finite number", file=source)
    return value


def _history(text: str, where: str, source: str) -> tuple[str, ...]:
    """Parse the shown history list; titles may hold brackets, so try each closing `]`."""
    body = text[len(_HISTORY) :]
    end = len(body)
    while (end := body.rfind("]", 0, end)) >= 0:
        try:
            value = ast.literal_eval(body[: end + 1])
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(value, list) and all(isinstance(t, str) for t in value):
            return tuple(value)
        break
    raise DataError(f"{where}: the viewing history is not a list of titles", file=source)


def parse_episode(source: str, key: str, record: object) -> RefEpisode:
    """Parse one `{userid, traj_by_line, ...}` record; DataError names file, key and line."""
    if not isinstance(record, dict):
        raise DataError(f"episode {key!r}: expected an object", file=source)
    lines, userid = record.get("traj_by_line"), record.get("userid")
    if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
        raise DataError(f"episode {key!r}: 'traj_by_line' is not a list of strings", file=source)
    if isinstance(userid, bool) or not isinstance(userid, int | str) or not str(userid).strip():
        raise DataError(f"episode {key!r}: 'userid' is missing or not an id", file=source)
    history: tuple[str, ...] | None = None
    steps: list[RefStep] = []
    pending: tuple[int, str, str, bool] | None = None  # t, asked, executed, replaced
    stopped = False
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        where = f"episode {key!r}, line {number}"
        if not line or line.startswith("Thought"):
            continue
        if line.startswith(_HISTORY):
            if history is not None or steps or pending:
                raise DataError(f"{where}: a second or late viewing history", file=source)
            history = _history(line, where, source)
            continue
        if history is None:
            raise DataError(f"{where}: expected the viewing history first", file=source)
        if stopped:
            raise DataError(f"{where}: a line after the user stopped: {line[:60]!r}", file=source)
        if m := _ACTION.fullmatch(line):
            t = int(m.group(1))
            if pending is not None or t != len(steps) + 1:
                raise DataError(f"{where}: unexpected 'Action {t}'", file=source)
            pending = (t, m.group(2), m.group(2), False)
        elif m := _REPLACED.fullmatch(line):
            if pending is None or int(m.group(1)) != pending[0] or pending[3]:
                raise DataError(f"{where}: a replacement with no matching action", file=source)
            asked = pending[1]
            prefix = f"Observation {pending[0]}: [{asked}] can not be recommened, instead, "
            if line.startswith(prefix + "recommend[") and line.endswith("]"):
                executed = line[len(prefix) + len("recommend[") : -1]  # exact, brackets and all
            elif m.group(2) == asked:
                executed = m.group(3)
            else:
                raise DataError(f"{where}: replaces {m.group(2)!r}, asked {asked!r}", file=source)
            pending = (pending[0], asked, executed, True)
        elif (m := _CONTINUE.fullmatch(line)) or (m := _STOP.fullmatch(line)):
            if pending is None or int(m.group(1)) != pending[0]:
                raise DataError(f"{where}: an outcome with no matching action", file=source)
            reward = _number(m.group(2), where, source)
            quit_ = m.re is _STOP
            t, asked, executed, replaced = pending
            steps.append(RefStep(t, asked, executed, replaced, None if quit_ else reward, quit_))
            pending, stopped = None, quit_
        else:
            raise DataError(f"{where}: unrecognised line {line[:60]!r}", file=source)
    if history is None:
        raise DataError(f"episode {key!r}: no viewing history line", file=source)
    if pending is not None:
        raise DataError(f"episode {key!r}: 'Action {pending[0]}' has no outcome", file=source)
    return RefEpisode(
        source, str(key), str(userid).strip(), history, tuple(steps), "stop" if stopped else "limit"
    )


def parse_log_file(path: str | Path) -> list[RefEpisode]:
    """Return every episode of one log file, in file order."""
    path = Path(path)
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc.msg} at line {exc.lineno}", file=path) from exc
    except OSError as exc:
        raise DataError(f"cannot read the log: {exc.strerror}", file=path) from exc
    if not isinstance(data, dict):
        raise DataError("expected a JSON object of episodes {key: {...}}", file=path)
    return [parse_episode(path.name, str(key), record) for key, record in data.items()]


def log_files(directory: str | Path, dataset: str, files: Sequence[str] = ()) -> list[Path]:
    """Return a dataset's log files in `directory` (`<dataset>_*.json`), sorted by name.

    `files` (names or glob patterns) keeps only the matching ones, so a caller can judge one run
    (or tune on one file and judge on another).
    """
    root = Path(directory)
    if not root.is_dir():
        raise DataError("reference log folder not found", file=root)
    found = sorted(root.glob(f"{dataset}_*.json"))
    if files:
        found = [p for p in found if any(fnmatch.fnmatch(p.name, pat) for pat in files)]
    if not found:
        wanted = f" matching {', '.join(files)}" if files else ""
        raise DataError(f"no {dataset}_*.json log files{wanted}", file=root)
    return found


def load_reference_logs(
    directory: str | Path, dataset: str, files: Sequence[str] = ()
) -> list[RefEpisode]:
    """Return the episodes of a dataset's reference logs (see `log_files` for the choice)."""
    return [ep for path in log_files(directory, dataset, files) for ep in parse_log_file(path)]


# --- mapping onto our dataset ----------------------------------------------------------------


def title_key(title: str) -> str:
    """Return the key titles are matched by: normalized (marks, entities, spaces) and casefolded."""
    return normalize_title(title).casefold()


def loose_title_key(title: str) -> str:
    """Return a fallback key: letters and digits only, "(TM)"/"(R)" dropped.

    Why: the reference's Steam catalogue and ours spell some games differently ("The Sims™ 3" vs
    "The Sims(TM) 3", "Need for Speed Undercover" vs "Need for Speed: Undercover").
    """
    key = _MARK_WORDS.sub("", title_key(title))
    return "".join(ch for ch in key if ch.isalnum())


class TitleIndex:
    """Map titles to our item ids: by `title_key`, else by `loose_title_key` (counted apart).

    A key several items share maps to all of them, sorted; `item` takes the lowest id.
    """

    def __init__(self, dataset: Dataset) -> None:
        ids: dict[str, list[int]] = {}
        loose: dict[str, list[int]] = {}
        for item, title in zip(dataset.items["item"], dataset.items["title"], strict=True):
            ids.setdefault(title_key(title), []).append(int(item))
            loose.setdefault(loose_title_key(title), []).append(int(item))
        self._ids = {k: tuple(sorted(v)) for k, v in ids.items()}
        self._loose = {k: tuple(sorted(v)) for k, v in loose.items() if k}
        self.duplicate_keys = sum(len(v) > 1 for v in self._ids.values())

    def ids(self, title: str) -> tuple[int, ...]:
        """Return every item whose title matches (empty when none does)."""
        return self._ids.get(title_key(title)) or self._loose.get(loose_title_key(title), ())

    def is_loose(self, title: str) -> bool:
        """Whether `title` maps only through the loose key."""
        return title_key(title) not in self._ids and loose_title_key(title) in self._loose

    def item(self, title: str) -> int | None:
        """Return the item a title maps to, or None."""
        ids = self.ids(title)
        return ids[0] if ids else None


@dataclass(frozen=True)
class UserMatch:
    """Which of our users an episode's user is, and how sure that is."""

    user: int | None
    """Dense dataset user id, or None when unmapped."""
    share: float | None
    """Share of the shown titles that map and are in that user's logged items."""
    n_titles: int
    """Shown titles that map to our catalogue."""
    reason: str
    """"ok", or why the user is unmapped."""


@dataclass(frozen=True)
class MappedEpisode:
    """A reference episode with its executed titles mapped to our items."""

    ref: RefEpisode
    items: tuple[int, ...]
    """Executed items of the mappable prefix, in order."""
    cut_at: int | None
    """The step of the first executed title that does not map (replay stops before it)."""
    user: UserMatch
    unmapped: str | None = None
    """That first unmapped title."""
    duplicate_titles: int = 0
    """Executed titles of the prefix that several of our items share."""
    loose_titles: int = 0
    """Executed titles of the prefix that mapped only by `loose_title_key`."""


@dataclass
class UserIndex:
    """Every user's logged items (any signal), and the reverse, for matching by history."""

    logged: list[frozenset[int]]
    by_item: dict[int, np.ndarray] = field(default_factory=dict)
    by_source_id: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> UserIndex:
        inter = dataset.interactions
        users, items = inter["user"].to_numpy(np.int64), inter["item"].to_numpy(np.int64)
        logged: list[set[int]] = [set() for _ in range(dataset.n_users)]
        for u, i in zip(users.tolist(), items.tolist(), strict=True):
            logged[u].add(i)
        order = np.argsort(items, kind="stable")
        starts = np.flatnonzero(np.r_[True, items[order][1:] != items[order][:-1]])
        chunks = np.split(users[order], starts[1:]) if items.size else []
        by_item = {int(items[order][s]): np.unique(c) for s, c in zip(starts, chunks, strict=True)}
        ids = {u: n for n, u in enumerate(dataset.users)}
        return cls([frozenset(s) for s in logged], by_item, ids)


def _shown(history: Iterable[str], titles: TitleIndex) -> list[tuple[int, ...]]:
    seen, out = set(), []
    for title in history:
        ids = titles.ids(title)
        if ids and ids not in seen:
            seen.add(ids)
            out.append(ids)
    return out


def match_user(
    episode: RefEpisode, titles: TitleIndex, users: UserIndex, method: UserMatchMethod
) -> UserMatch:
    """Map an episode's user: by source id verified by history ("id"), or by history alone.

    "history" counts, for every user, the distinct shown titles in their log, and accepts the
    best user with `>= MIN_HISTORY_TITLES` mapped titles and `>= MIN_HISTORY_SHARE`, if they hold
    `MIN_MATCH_MARGIN` more of them than anyone else.
    """
    shown = _shown(episode.history, titles)
    n = len(shown)
    if method == "id":
        user = users.by_source_id.get(episode.userid)
        if user is None:
            return UserMatch(None, None, n, "id not in dataset")
        if n == 0:
            return UserMatch(None, None, 0, "no shown title maps")
        share = sum(bool(users.logged[user].intersection(ids)) for ids in shown) / n
        if share < MIN_HISTORY_SHARE:
            return UserMatch(None, share, n, "history share below threshold")
        return UserMatch(user, share, n, "ok")
    if n < MIN_HISTORY_TITLES:
        return UserMatch(None, None, n, "too few shown titles map")
    hits: Counter[int] = Counter()
    for ids in shown:
        holders = [users.by_item[i] for i in ids if i in users.by_item]
        if holders:
            hits.update(np.unique(np.concatenate(holders)).tolist())
    ranked = hits.most_common(2)
    if not ranked:
        return UserMatch(None, 0.0, n, "history share below threshold")
    best, count = ranked[0]
    share = count / n
    if share < MIN_HISTORY_SHARE:
        return UserMatch(None, share, n, "history share below threshold")
    if len(ranked) > 1 and count - ranked[1][1] < MIN_MATCH_MARGIN:
        return UserMatch(None, share, n, "no unique best match")
    return UserMatch(int(best), share, n, "ok")


def map_episodes(
    episodes: Sequence[RefEpisode], dataset: Dataset, method: UserMatchMethod
) -> list[MappedEpisode]:
    """Map every episode's executed titles (up to the first that does not map) and its user."""
    titles, users = TitleIndex(dataset), UserIndex.from_dataset(dataset)
    out = []
    for ep in episodes:
        items: list[int] = []
        cut_at, unmapped, dups, loose = None, None, 0, 0
        for step in ep.steps:
            ids = titles.ids(step.executed)
            if not ids:
                cut_at, unmapped = step.t, step.executed
                break
            items.append(ids[0])
            dups += len(ids) > 1
            loose += titles.is_loose(step.executed)
        user = match_user(ep, titles, users, method)
        out.append(MappedEpisode(ep, tuple(items), cut_at, user, unmapped, dups, loose))
    return out
