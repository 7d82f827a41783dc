"""Decide when a remembered state is near enough to hint: the rules of BiLLP's micro level.

Distances are squared L2 between unit vectors (0 = same text, 2 = orthogonal, 4 = opposite).
The reference implementation fixed numbers tuned for its embedding model; they mean nothing for
another embedding, so the default rule is *derived* from the memory itself: fire when the nearest
stored state is at most the q-quantile of the nearest-stored distances that earlier queries saw
(`memory.stores` records those as lessons are written). A quantile of 0.5 then means "as close as
the closer half of what queries usually find", whatever the embedding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

OBSERVED_KEY = "observed_nearest"
OBSERVED_SIZE = 2000


@dataclass(frozen=True)
class HintRule:
    """When the nearest stored state is close enough to give a hint (squared L2, unit vectors).

    Fires when the distance is below `near` (a near-identical state), or inside `band`, or, for a
    derived rule, at most the `quantile` of the distances queries observed (`observe`). With no
    observations yet a derived rule fires only on `near`.
    """

    near: float = 0.01
    band: tuple[float, float] | None = None
    quantile: float | None = None

    def __post_init__(self) -> None:
        _check_near(self.near)
        band = self.band
        if band is not None and not 0.0 <= band[0] <= band[1] <= 4.0:
            raise ValueError(f"band must be (low, high) with 0 <= low <= high <= 4, got {band}")
        if self.quantile is not None and not 0.0 < self.quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {self.quantile}")

    @classmethod
    def derived(cls, quantile: float, near: float = 0.01) -> HintRule:
        """Return the rule that fits any embedding: the quantile of observed nearest distances."""
        return cls(near=near, quantile=quantile)

    @classmethod
    def reference(cls, near: float = 0.01, band: tuple[float, float] | None = None) -> HintRule:
        """Return the reference implementation's fixed rule (its numbers fit its own embedder)."""
        return cls(near=near, band=tuple(band) if band is not None else None)

    def radius(self, observed: Sequence[float], *, presorted: bool = False) -> float | None:
        """Return the derived radius for these observations (None: not derived, or none yet).

        `presorted` skips the sort for a caller that keeps its sample ordered (`memory.stores`).
        """
        if self.quantile is None or not observed:
            return None
        return sorted_quantile(observed if presorted else sorted(observed), self.quantile)

    def fires(self, sq_l2: float, radius: float | None = None) -> bool:
        """Return whether a nearest stored state at `sq_l2` is close enough to hint.

        `radius` is the derived radius of the memory asked (`_TextStore.radius`).
        """
        if sq_l2 < self.near:
            return True
        if self.band is not None and self.band[0] <= sq_l2 <= self.band[1]:
            return True
        return radius is not None and sq_l2 <= radius


def sorted_quantile(values: Sequence[float], q: float) -> float:
    """Return the q-quantile of ascending `values`, as `numpy.quantile`'s default (linear).

    In plain Python: the sample changes at every learning step, and converting 2,000 floats to
    an array for each step's lookup cost more than the lookup.
    """
    h = (len(values) - 1) * q
    lo = math.floor(h)
    a, b, t = values[lo], values[min(lo + 1, len(values) - 1)], h - lo
    return float(a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t))  # numpy's _lerp


def _check_near(near: float) -> float:
    if not 0.0 <= near <= 4.0:
        raise ValueError(f"near is a squared L2 distance in [0, 4], got {near}")
    return near
