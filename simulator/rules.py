"""The BiLLP quit rule for one step, as a pure function of the episode so far.

The graph's user node keeps no environment object between steps (state lives in LangGraph
checkpoints), so it asks this function; `RecEnv` plays the very same rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_RATING_TO_STAY = 2.0


@dataclass(frozen=True, slots=True)
class Judgement:
    """What the user did with one recommended item."""

    rating: float
    accepted: bool
    reward: float
    quit_reason: str | None
    """repeat, low_rating, similar, max_steps (truncation), or None while the user stays."""
    min_distance: float
    """Distance to the nearest item of the window (inf when the window is empty)."""


def judge(
    rating: float,
    item: int,
    recommended: Sequence[int],
    vectors: np.ndarray,
    tau: float,
    window: int,
    max_steps: int,
) -> Judgement:
    """Judge recommending `item` after `recommended` (this episode's items so far, in order).

    Steps are numbered from 1; from step 2 the user leaves on a rating below 2 or when the item
    lies closer than `tau` to one of the last `window` recommended items (a repeat always does).
    When several causes hold, the reason is the first of repeat, low_rating, similar.
    """
    step = len(recommended) + 1
    recent = list(recommended[-window:]) if window > 0 else []
    min_distance = math.inf
    if recent:
        diff = vectors[recent] - vectors[item]
        min_distance = float(np.sqrt(np.square(diff).sum(-1)).min())
    reason = None
    if step >= 2:
        if item in recent:
            reason = "repeat"
        elif rating < MIN_RATING_TO_STAY:
            reason = "low_rating"
        elif np.float32(min_distance) < np.float32(tau):
            reason = "similar"
    accepted = reason is None
    if accepted and step >= max_steps:
        reason = "max_steps"
    return Judgement(
        rating=float(rating),
        accepted=accepted,
        reward=float(rating) if accepted else 0.0,
        quit_reason=reason,
        min_distance=min_distance,
    )
