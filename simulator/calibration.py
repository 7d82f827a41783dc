"""Map user-model scores to ratings 1–5, so the environment's reward reads like a star rating.

The rule (fit on held-out positives and on random user–item pairs of the same model):
1. The 3|4 boundary is the equal-error point: the score `t` where the share of positives below
   `t` equals the share of random pairs above it. So "mostly 4–5 for what users really took,
   mostly 1–3 for random items" holds symmetrically, as far as the model can separate them.
2. The positives above `t` split evenly into 4 and 5 (4|5 boundary = their median).
3. The random pairs below `t` split evenly into 1, 2 and 3 (boundaries at their terciles). Since
   the environment quits on a rating < 2, about a third of the random items make a user leave.
A score maps to a continuous rating by piecewise-linear interpolation through
(boundary_k, k + 0.5), extended at the end slopes to 1 and 5 and clipped to [1, 5]; the integer
rating (test env) rounds it, so integer rating k covers exactly [boundary_{k-1}, boundary_k).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

RULE = "equal-error 3|4 boundary; positives above split at median; random below at terciles"


@dataclass(frozen=True)
class RatingCalibrator:
    """A monotone map from model score to rating; `knots` are the scores of ratings 1.5..4.5."""

    knots: tuple[float, float, float, float]

    def __post_init__(self) -> None:
        k = self.knots
        ok = len(k) == 4 and all(map(math.isfinite, k))
        if not ok or not all(a < b for a, b in itertools.pairwise(k)):
            raise ValueError(f"RatingCalibrator needs 4 finite, strictly increasing knots, got {k}")

    @classmethod
    def fit(cls, pos_scores: torch.Tensor, random_scores: torch.Tensor) -> RatingCalibrator:
        """Fit the boundaries from held-out positive scores and random-pair scores (see module)."""
        pos = pos_scores.detach().double().flatten().sort().values
        rnd = random_scores.detach().double().flatten().sort().values
        if len(pos) < 2 or len(rnd) < 3:
            raise ValueError(
                f"RatingCalibrator.fit needs >= 2 positive and >= 3 random scores, got "
                f"{len(pos)} and {len(rnd)}; evaluate on more users"
            )
        if not (torch.isfinite(pos).all() and torch.isfinite(rnd).all()):
            raise ValueError("RatingCalibrator.fit got non-finite scores; the model diverged")
        t = _equal_error_point(pos, rnd)
        above, below = pos[pos >= t], rnd[rnd < t]
        b45 = float(above.quantile(0.5)) if len(above) else t
        if len(below) >= 3:
            b15, b25 = (float(below.quantile(q)) for q in (1 / 3, 2 / 3))
        else:
            b15, b25 = t - 2.0, t - 1.0
        return cls(_strictly_increasing([b15, b25, t, b45], scale=float(rnd.std()) or 1.0))

    def __call__(self, scores: torch.Tensor, integer: bool = False) -> torch.Tensor:
        """Return ratings in [1, 5] (float tensor; whole numbers when `integer`).

        numpy, not torch: the same float64 arithmetic, without torch's per-op dispatch and
        thread pool, which stalled a one-row call for milliseconds on a busy machine.
        """
        x = torch.as_tensor(scores).detach().cpu().double().numpy()
        k = np.asarray(self.knots, dtype=np.float64)
        # Knots at k+0.5 plus, at ratings 1 and 5, half a segment further at the end slopes.
        xs = np.concatenate([k[:1] - (k[1] - k[0]) / 2, k, k[-1:] + (k[-1] - k[-2]) / 2])
        ys = np.arange(1.0, 5.5, 0.5, dtype=np.float64)[[0, 1, 3, 5, 7, 8]]
        seg = np.searchsorted(xs, x, side="left").clip(1, len(xs) - 1)
        x0, x1, y0, y1 = xs[seg - 1], xs[seg], ys[seg - 1], ys[seg]
        rating = (y0 + (x - x0) * (y1 - y0) / (x1 - x0)).clip(1.0, 5.0)
        if integer:
            rating = np.floor(rating + 0.5).clip(1.0, 5.0)
        return torch.from_numpy(rating.astype(np.float32))

    def histogram(self, scores: torch.Tensor, integer: bool = True) -> dict[str, int]:
        """Count scores per rating "1".."5": rounded when `integer`, else by floor (5.0 -> "5")."""
        r = self(scores, integer=integer)
        r = r if integer else torch.floor(r).clamp(max=5.0)
        counts = torch.bincount(r.long().flatten() - 1, minlength=5)
        return {str(k + 1): int(counts[k]) for k in range(5)}

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-native description that `from_dict` restores exactly."""
        return {"knots": list(self.knots), "rule": RULE}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RatingCalibrator:
        """Rebuild a calibrator from `to_dict` output; a malformed dict raises ValueError."""
        try:
            knots = tuple(float(v) for v in data["knots"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"calibrator dict needs 'knots': 4 numbers, got {data!r}") from e
        return cls(knots)  # type: ignore[arg-type]


def _equal_error_point(pos: torch.Tensor, rnd: torch.Tensor) -> float:
    """Return the score t (among all scores) where P(pos < t) is closest to P(random >= t)."""
    cand = torch.cat([pos, rnd]).unique()
    pos_below = torch.searchsorted(pos, cand, side="left").double() / len(pos)
    rnd_above = 1.0 - torch.searchsorted(rnd, cand, side="left").double() / len(rnd)
    return float(cand[torch.argmin((pos_below - rnd_above).abs())])


def _strictly_increasing(values: list[float], scale: float) -> tuple[float, float, float, float]:
    """Nudge ties apart (by 1e-6 of the score spread) so interpolation is well defined."""
    eps = 1e-6 * scale
    out = [values[0]]
    for v in values[1:]:
        out.append(max(v, out[-1] + eps))
    return tuple(out)  # type: ignore[return-value]
