"""Candidate items for the actor's shortlist mode and for every fallback.

Built from the training logs only (never the ground-truth model): item-CF co-occurrence with the
user's history and this episode's items, items that would look too similar to the last
recommendations (under the training model's own item vectors) pushed back, and genre
diversification so the shortlist offers the planner real choices. Items the user logged never
enter it when the env excludes them (`EnvConfig.logged_items`), so neither does any fallback.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch

from simulator.build import LEARNER_TAU_MARGIN, EnvBundle, distance_vectors
from simulator.policies import item_neighbors

MAX_SHARE_PER_GENRE = 1 / 3  # of the shortlist, for its leading genre


class CandidateGenerator:
    """Rank catalogue items for a user and episode from training-log co-occurrence."""

    def __init__(self, bundle: EnvBundle, n_neighbors: int = 100) -> None:
        n_items = bundle.dataset.n_items
        self.nbr_idx, self.nbr_sim, counts = item_neighbors(
            bundle.train_interactions, n_items, n_neighbors
        )
        self.prior = 1e-6 * counts / counts.max().clamp_min(1.0)
        # numpy twins for the per-step work: a few thousand scalar ops, which torch would hand to
        # its intra-op thread pool (milliseconds to wake on a busy machine) for no gain
        self._nbr_idx_np, self._nbr_sim_np = self.nbr_idx.numpy(), self.nbr_sim.numpy()
        self._prior_np = self.prior.numpy()
        self.vectors = distance_vectors(bundle.train_model)
        self._vectors_np = np.ascontiguousarray(self.vectors.numpy(), dtype=np.float32)
        self.tau = bundle.train_tau * LEARNER_TAU_MARGIN
        self.window = bundle.config.window
        self.lead_genre = [g[0] if len(g) else "" for g in bundle.dataset.items["genres"]]
        self.excluded = bundle.excluded  # user -> items they may never be recommended

    def scores(self, history: Sequence[int], recommended: Sequence[int]) -> torch.Tensor:
        """Return each item's co-occurrence score with the history and this episode's items."""
        scores = self._prior_np.copy()
        seeds = np.asarray([*history, *recommended], dtype=np.int64)
        if seeds.size:
            # unbuffered and in index order, like torch's index_add_: the same float32 sums
            np.add.at(scores, self._nbr_idx_np[seeds].reshape(-1), self._nbr_sim_np[seeds].ravel())
        return torch.from_numpy(scores)

    def distance_to(self, items: Sequence[int]) -> np.ndarray:
        """Return each item's Euclidean distance to the nearest of `items` (a few recent ones).

        One row at a time in numpy, as the quit rule measures it: a single small pass per step,
        where `torch.cdist` spent 30-150 ms in its thread pool on a busy 2-core machine.
        """
        best = np.full(len(self._vectors_np), np.inf, dtype=np.float32)
        for item in items:
            np.minimum(best, self._sq_distances(int(item)), out=best)
        return np.sqrt(best)

    @functools.lru_cache(maxsize=256)  # noqa: B019 (one generator per bundle, kept for life)
    def _sq_distances(self, item: int) -> np.ndarray:
        """Return every item's squared distance to `item`, read-only.

        The window slides by one item a step, so each row is computed once, not `window` times.
        """
        diff = self._vectors_np - self._vectors_np[item]
        row = np.einsum("ij,ij->i", diff, diff)
        row.flags.writeable = False
        return row

    @functools.lru_cache(maxsize=1024)  # noqa: B019 (one generator per bundle, kept for life)
    def _excluded_items(self, user: int) -> np.ndarray:
        """Return the items `user` may never be shown, as an index array (asked every step)."""
        return np.fromiter(sorted(self.excluded(user)), dtype=np.int64)

    def shortlist(
        self, user: int, history: Sequence[int], recommended: Sequence[int], k: int
    ) -> list[int]:
        """Return `k` distinct items, best first, diversified by genre.

        Never an item recommended this episode, nor one excluded for `user` (their logged
        history under `logged_items="exclude"`); the ranking itself uses the shown history.
        """
        # numpy for the per-step arithmetic (a torch op costs several times a numpy one at this
        # size); torch's topk for the ranking, so ties order as they always did
        scores = self.scores(history, recommended).numpy()
        scores[self._excluded_items(user)] = -np.inf
        if recommended:
            scores[np.asarray(recommended, dtype=np.int64)] = -np.inf
            near = self.distance_to(recommended[-self.window :]) < self.tau
            scores[near] -= 1e3  # would likely quit
        available = int(np.isfinite(scores).sum())
        k = min(k, available)
        if k <= 0:
            raise ValueError("no catalogue item is left to recommend in this episode")
        pool = torch.from_numpy(scores).topk(min(available, 5 * k)).indices.tolist()
        cap = max(1, math.ceil(k * MAX_SHARE_PER_GENRE))
        chosen: list[int] = []
        per_genre: dict[str, int] = {}
        for item in pool:
            genre = self.lead_genre[item]
            if per_genre.get(genre, 0) < cap:
                chosen.append(item)
                per_genre[genre] = per_genre.get(genre, 0) + 1
            if len(chosen) == k:
                return chosen
        rest = [i for i in pool if i not in set(chosen)]
        return chosen + rest[: k - len(chosen)]
