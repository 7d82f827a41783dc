"""Small, dependency-free statistics for comparing two simulators' judgements.

Why here and not scipy: scipy is not a dependency. Every function returns None (never NaN, never
an exception) for empty or constant input, so a report over a tiny or degenerate subset still
serializes to JSON.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Return Pearson's r, or None when there are < 2 pairs or either side is constant."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.size < 2 or a.size != b.size or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Return Spearman's rho (average ranks for ties, then Pearson); None as for `pearson`."""
    if len(x) != len(y):
        return None
    rank = lambda v: pd.Series(v, dtype=float).rank(method="average").to_numpy()  # noqa: E731
    return pearson(rank(x), rank(y))


def confusion(theirs: Sequence[float], ours: Sequence[float]) -> list[list[int]]:
    """Return a 5x5 count matrix: row = their rating rounded to 1..5, column = ours."""
    counts = np.zeros((5, 5), dtype=int)
    for a, b in zip(theirs, ours, strict=True):
        counts[int(np.clip(round(a), 1, 5)) - 1, int(np.clip(round(b), 1, 5)) - 1] += 1
    return counts.tolist()


def mean(values: Sequence[float]) -> float | None:
    """Return the mean, or None for no values."""
    return float(np.mean(values)) if len(values) else None


def share(part: int, whole: int) -> float | None:
    """Return part / whole, or None when there is no whole to share."""
    return part / whole if whole else None


def hist(values: Sequence[int]) -> dict[str, int]:
    """Return value -> count, sorted by value, with string keys (JSON objects need them)."""
    return {str(k): v for k, v in sorted(Counter(values).items())}
