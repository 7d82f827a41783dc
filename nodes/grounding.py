"""Map the actor's free-text title to a catalogue item the user has not been shown this episode.

The reference mapped every answer to its nearest catalogue item by LLM hidden states, without
excluding items already recommended, so most actions were silently replaced and repeats made users
quit. Here: exact title, then a normalized title, then a fuzzy match, then the nearest title
embedding — each step skipping excluded items — and every result says how it was matched.
Excluded are this episode's items and, under `logged_items="exclude"`, the user's logged items:
a title copied from the prompt's history then grounds to the nearest item the user lacks.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np
from rapidfuzz import fuzz, process

MatchKind = Literal["exact", "normalized", "fuzzy", "embedding"]
FUZZY_CUTOFF = 90.0  # rapidfuzz ratio (0-100): above this a title is a spelling variant
_ARTICLES = re.compile(r"^(the|a|an)\s+")
_NON_WORD = re.compile(r"[^\w\s]")
_SPACES = re.compile(r"\s+")


def normalize_for_match(title: str) -> str:
    """Return a match key: accents folded, lowercase, punctuation and a leading article dropped."""
    text = unicodedata.normalize("NFKD", title)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = _SPACES.sub(" ", _NON_WORD.sub(" ", text)).strip()
    return _ARTICLES.sub("", text)


@dataclass(frozen=True, slots=True)
class Grounded:
    """Which item an answer became, and how."""

    item: int
    title: str
    match: MatchKind
    replaced: bool
    """True when the item's title is not the one the actor wrote (fuzzy or embedding match)."""


class TitleIndex:
    """Find catalogue items by title: exact, normalized, fuzzy, then embedding similarity."""

    def __init__(self, titles: Sequence[str], vectors: np.ndarray) -> None:
        if len(titles) != len(vectors):
            raise ValueError(f"{len(titles)} titles but {len(vectors)} title vectors")
        self.titles = list(titles)
        self._exact: dict[str, list[int]] = {}
        self._norm: dict[str, list[int]] = {}
        for i, title in enumerate(self.titles):
            self._exact.setdefault(title, []).append(i)
            self._norm.setdefault(normalize_for_match(title), []).append(i)
        self._norm_keys = list(self._norm)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._index = faiss.IndexFlatIP(vectors.shape[1])
        self._index.add(vectors)

    def __len__(self) -> int:
        return len(self.titles)

    @staticmethod
    def _first_allowed(ids: Sequence[int], exclude: Collection[int]) -> int | None:
        return next((i for i in ids if i not in exclude), None)

    def match(self, answer: str, exclude: Collection[int] = ()) -> Grounded | None:
        """Return the item `answer` names (exact, normalized or fuzzy title), or None."""
        hit = self._first_allowed(self._exact.get(answer.strip(), ()), exclude)
        if hit is not None:
            return Grounded(hit, self.titles[hit], "exact", False)
        key = normalize_for_match(answer)
        hit = self._first_allowed(self._norm.get(key, ()), exclude)
        if hit is not None:
            return Grounded(hit, self.titles[hit], "normalized", False)
        if not key:
            return None
        for _, _, pos in process.extract(
            key, self._norm_keys, scorer=fuzz.ratio, score_cutoff=FUZZY_CUTOFF, limit=5
        ):
            hit = self._first_allowed(self._norm[self._norm_keys[pos]], exclude)
            if hit is not None:
                return Grounded(hit, self.titles[hit], "fuzzy", True)
        return None

    def ground(
        self, answer: str, query_vector: np.ndarray | None, exclude: Collection[int] = ()
    ) -> Grounded:
        """Return the item `answer` names, or the nearest title embedding not in `exclude`.

        `query_vector` is the answer's embedding (unit norm), used only when no title matches.
        """
        if len(exclude) >= len(self.titles):
            raise ValueError("every catalogue item is excluded; nothing left to recommend")
        return self.match(answer, exclude) or self.nearest(query_vector, exclude)

    def nearest(self, query_vector: np.ndarray | None, exclude: Collection[int]) -> Grounded:
        """Return the item whose title embedding is closest to the query, skipping `exclude`."""
        if query_vector is None:
            raise ValueError("no title matched and no query embedding was given")
        query = np.asarray(query_vector, dtype=np.float32).reshape(1, -1)
        k = min(len(self.titles), len(exclude) + 8)
        while True:
            _, ids = self._index.search(query, k)
            hit = self._first_allowed([int(i) for i in ids[0] if i >= 0], exclude)
            if hit is not None:
                return Grounded(hit, self.titles[hit], "embedding", True)
            if k == len(self.titles):
                raise ValueError("every catalogue item is excluded; nothing left to recommend")
            k = min(len(self.titles), k * 2)
