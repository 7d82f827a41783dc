"""Item distance for the quit rule: the threshold tau and distances to a window of items.

Shared by the envs, the policies and the build, so everyone measures "too similar" with the
very same arithmetic (a policy that checks the rule agrees with the env to the last bit).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def distance_threshold(
    item_vectors: Tensor, percentile: float, n_pairs: int = 200_000, seed: int = 0
) -> float:
    """Return tau: the `percentile`-th percentile of distances between distinct item pairs.

    The rule makes "too similar" mean the same thing on every dataset whatever the scale of the
    model's vectors: about `percentile` % of random item pairs are closer than tau. Uses every
    unordered pair when there are at most `n_pairs` of them, else `n_pairs` pairs drawn uniformly
    (seeded); percentiles interpolate linearly, as numpy's default does.
    """
    if item_vectors.ndim != 2 or item_vectors.shape[0] < 2:
        raise ValueError(f"item_vectors must be [n_items >= 2, d], got {tuple(item_vectors.shape)}")
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    vectors = item_vectors.detach().to(torch.float32)
    n = vectors.shape[0]
    if n * (n - 1) // 2 <= n_pairs:
        first, second = torch.triu_indices(n, n, offset=1)
    else:
        gen = torch.Generator().manual_seed(seed)
        first = torch.randint(0, n, (n_pairs,), generator=gen)
        # An offset in [1, n) makes the partner distinct and still uniform over the others.
        second = (first + torch.randint(1, n, (n_pairs,), generator=gen)) % n
    dists = torch.cat(
        [
            (vectors[first[i : i + 65536]] - vectors[second[i : i + 65536]]).norm(dim=1)
            for i in range(0, first.numel(), 65536)
        ]
    )
    return float(torch.quantile(dists.double(), percentile / 100.0))


def window_distances(vectors: Tensor, items: Tensor, window: Tensor, pad: int) -> Tensor:
    """Return [B, M, W] distances from `items` [B, M] to `window` [B, W] (inf at padding).

    The batched env and the policies share this one computation, so a policy that checks the
    similarity rule with the world's vectors agrees with the env to the last bit.
    """
    empty = window == pad
    safe = window.masked_fill(empty, 0)
    d = vectors.shape[1]
    # index_select on flat ids is several times faster than advanced indexing here.
    near = vectors.index_select(0, items.reshape(-1)).view(*items.shape, 1, d)
    recent = vectors.index_select(0, safe.reshape(-1)).view(safe.shape[0], 1, safe.shape[1], d)
    return (near - recent).square().sum(-1).sqrt().masked_fill(empty.unsqueeze(1), math.inf)
