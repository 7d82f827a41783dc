"""Reference policies on the batched env: the floor, the classic baselines and the ceiling.

Random and popularity are the floors every agent must beat; item-based CF is the standard
non-learning baseline and uses logged (training) data only; the oracle reads the ground truth and
exists only to measure how far any policy is from the best greedy play.
Every policy picks among `state.unavailable`'s complement: never an item already recommended in
the episode, nor one the user logged when the env excludes logged items.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from simulator.env import BatchedRecEnv, BatchState, UserWorld, quit_reason
from simulator.geometry import window_distances

_FULL_SCAN_ROWS = 8  # rows per chunk when every item must be checked (B x I x W x d floats)


@runtime_checkable
class Policy(Protocol):
    """Choose one item per running row of a `BatchState`."""

    name: str

    def reset(self, users: Tensor) -> None:
        """Prepare for a new batch of episodes, one per global user id."""
        ...

    def act(self, state: BatchState) -> Tensor:
        """Return one item id per row (values for finished rows are ignored)."""
        ...


@runtime_checkable
class Reseedable(Protocol):
    """Restart the generator of a policy that draws random numbers."""

    def reseed(self, seed: int) -> None: ...


def _no_free_item(rows: Tensor) -> None:
    if rows.numel():
        raise ValueError(f"row {int(rows[0])}: every item was already recommended or is logged")


def greedy_pick(
    scores: Tensor,
    allowed: Tensor,
    fresh: Tensor,
    window: Tensor,
    vectors: Tensor,
    tau: float,
    n_candidates: int = 16,
) -> Tensor:
    """Return per row the best-scoring `allowed` item that is >= `tau` from every window item.

    Only the top `n_candidates` are checked first, so a step costs B x n_candidates x W x d;
    rows where all of them fail get a full scan. A row with no safe allowed item falls back to
    its best `fresh` (still available) item: the user will leave, but the action is valid.
    """
    n_items = scores.shape[1]
    masked = scores.masked_fill(~allowed, -math.inf)
    values, cand = masked.topk(min(n_candidates, n_items), dim=1)
    pick, found = first_safe(cand, torch.isfinite(values), window, vectors, tau)
    rest = (~found).nonzero().squeeze(1)
    if not bool(fresh[rest].any(1).all()):
        raise ValueError("greedy_pick: a row has no item left that is still available")
    every = torch.arange(n_items)
    for chunk in rest.split(_FULL_SCAN_ROWS):
        dist = window_distances(vectors, every.expand(chunk.numel(), -1), window[chunk], n_items)
        best, where = masked[chunk].masked_fill(~(dist >= tau).all(-1), -math.inf).max(1)
        fallback = scores[chunk].masked_fill(~fresh[chunk], -math.inf).argmax(1)
        pick[chunk] = torch.where(torch.isfinite(best), where, fallback)
    return pick


def first_safe(
    cand: Tensor, ok: Tensor, window: Tensor, vectors: Tensor, tau: float
) -> tuple[Tensor, Tensor]:
    """Return the first candidate per row (best first) that is `ok` and >= `tau` from the window.

    Also returns which rows found one; costs B x K x W x d for K candidates.
    """
    n_items = vectors.shape[0]
    ok = ok & (window_distances(vectors, cand, window, n_items) >= tau).all(-1)
    pick = cand.gather(1, ok.int().argmax(1, keepdim=True)).squeeze(1)
    return pick, ok.any(1)


class RandomPolicy:
    """Recommend uniformly among the items still available in the episode."""

    name = "random"

    def __init__(self, n_items: int, seed: int = 0) -> None:
        if n_items < 1:
            raise ValueError("RandomPolicy: n_items must be >= 1")
        self.n_items = n_items
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the generator, so an evaluation with the same seed repeats exactly."""
        self._gen = torch.Generator().manual_seed(seed)

    def reset(self, users: Tensor) -> None:
        """Keep nothing: the state says what was recommended."""

    def act(self, state: BatchState) -> Tensor:
        """Draw by rejection: with few items used per episode, one or two rounds suffice."""
        b = state.batch_size
        actions = torch.randint(0, self.n_items, (b,), generator=self._gen)
        rows = torch.arange(b)
        used = state.unavailable
        for _ in range(8):
            clash = (used[rows, actions] & state.active).nonzero().squeeze(1)
            if clash.numel() == 0:
                return actions
            actions[clash] = torch.randint(0, self.n_items, (clash.numel(),), generator=self._gen)
        # Crowded rows: draw exactly among the free items with random keys.
        clash = (used[rows, actions] & state.active).nonzero().squeeze(1)
        free = ~used[clash]
        _no_free_item(clash[~free.any(1)])
        keys = torch.rand(free.shape, generator=self._gen).masked_fill(~free, -1.0)
        actions[clash] = keys.argmax(1)
        return actions


class PopularityPolicy:
    """Recommend the most popular item (training-log counts) still available to the user."""

    name = "popularity"

    def __init__(self, popularity: Tensor) -> None:
        popularity = torch.as_tensor(popularity).reshape(-1)
        if popularity.numel() == 0:
            raise ValueError("PopularityPolicy: empty popularity")
        # Stable sort: equal counts fall back to the lower item id, so runs are reproducible.
        self.order = torch.sort(popularity.double(), descending=True, stable=True).indices

    def reset(self, users: Tensor) -> None:
        """Keep nothing: the state says what was recommended."""

    def act(self, state: BatchState) -> Tensor:
        """Take the first free item of the popularity order (within the top few)."""
        # A row has used up at most `step` + its excluded items, so one of the next is free.
        head = int(state.step.max()) + 1 + int(state.excluded.sum(1).max())
        top = self.order[: min(self.order.numel(), head)]
        free = ~(state.recommended[:, top] | state.excluded[:, top])
        _no_free_item((~free.any(1) & state.active).nonzero().squeeze(1))
        return top[free.int().argmax(1)]


def item_neighbors(
    train_interactions: pd.DataFrame, n_items: int, k: int = 200, block: int = 512
) -> tuple[Tensor, Tensor, Tensor]:
    """Return each item's top-`k` cosine co-occurrence neighbours and the item counts.

    sim(i, j) = |users with i and j| / sqrt(|users with i| * |users with j|), over positives
    (signal > 0). The I x I matrix is never held: blocks of `block` items are multiplied against
    the sparse user-item matrix and cut to their top k. Returns (indices [I, k], sims [I, k],
    counts [I]).
    """
    missing = {"user", "item", "signal"} - set(train_interactions.columns)
    if missing:
        raise ValueError(f"train_interactions lacks columns {sorted(missing)}")
    pos = train_interactions.loc[train_interactions["signal"] > 0, ["user", "item"]]
    pos = pos.drop_duplicates().sort_values("item", kind="stable")
    items = torch.as_tensor(pos["item"].to_numpy(np.int64, copy=True))
    if items.numel() and (int(items.min()) < 0 or int(items.max()) >= n_items):
        raise ValueError(f"train_interactions: item ids must lie in [0, {n_items})")
    users = torch.as_tensor(pd.factorize(pos["user"])[0].astype(np.int64))
    n_users = int(users.max()) + 1 if users.numel() else 0
    counts = torch.bincount(items, minlength=n_items).float()
    k = min(k, n_items - 1)
    idx = torch.zeros(n_items, k, dtype=torch.long)
    sim = torch.zeros(n_items, k)
    if n_users == 0 or k == 0:
        return idx, sim, counts
    item_user = torch.sparse_coo_tensor(
        torch.stack([items, users]),
        torch.ones(items.numel()),
        (n_items, n_users),
        check_invariants=True,
    ).coalesce()
    bounds = torch.searchsorted(items, torch.arange(0, n_items + block, block).clamp(max=n_items))
    for n, start in enumerate(range(0, n_items, block)):
        stop = min(start + block, n_items)
        lo, hi = int(bounds[n]), int(bounds[n + 1])
        slab = torch.zeros(n_users, stop - start)
        slab[users[lo:hi], items[lo:hi] - start] = 1.0
        co = torch.sparse.mm(item_user, slab).T  # [block, I] co-occurrence counts
        co[torch.arange(stop - start), torch.arange(start, stop)] = 0.0
        norm = (counts[start:stop, None] * counts[None, :]).sqrt().clamp_min(1.0)
        sim[start:stop], idx[start:stop] = (co / norm).topk(k, dim=1)
    return idx, sim, counts


class ItemCFPolicy:
    """Recommend by item-based CF on training logs, avoiding items that would trip the quit rule.

    A candidate scores the summed similarity to the user's logged history plus the items
    accepted in this episode. It never sees the ground truth: the similarity check uses the
    training-log model's own `item_vectors` and `tau`.
    """

    name = "itemcf"
    _TIE_BREAK = 1e-6  # popularity only orders (near-)ties, notably items with no co-occurrence

    def __init__(
        self,
        train_interactions: pd.DataFrame,
        n_items: int,
        history: dict[int, list[int]],
        item_vectors: Tensor,
        tau: float,
        n_neighbors: int = 200,
        n_candidates: int = 16,
    ) -> None:
        if item_vectors.ndim != 2 or item_vectors.shape[0] != n_items:
            raise ValueError(f"ItemCFPolicy: item_vectors must be [{n_items}, d]")
        self.n_items, self.history, self.tau = n_items, history, float(tau)
        self.vectors = item_vectors.detach().to(torch.float32).contiguous()
        self.n_candidates = n_candidates
        self.nbr_idx, self.nbr_sim, counts = item_neighbors(
            train_interactions, n_items, n_neighbors
        )
        self.prior = self._TIE_BREAK * counts / counts.max().clamp_min(1.0)
        self._scores = torch.zeros(0, n_items)

    def _add(self, rows: Tensor, items: Tensor) -> None:
        """Add the neighbour similarities of `items[j]` to the score row `rows[j]`."""
        if items.numel() == 0:
            return
        flat = (rows.unsqueeze(1) * self.n_items + self.nbr_idx[items]).reshape(-1)
        self._scores.view(-1).index_add_(0, flat, self.nbr_sim[items].reshape(-1))

    def reset(self, users: Tensor) -> None:
        """Score every item against each user's logged history."""
        users = torch.as_tensor(users).reshape(-1)
        logs = []
        for u in users.tolist():
            if u not in self.history:
                raise ValueError(f"ItemCFPolicy: no logged history for user {u} (use [] if none)")
            logs.append(self.history[u])
        lengths = torch.tensor([len(h) for h in logs], dtype=torch.long)
        items = torch.tensor([i for h in logs for i in h], dtype=torch.long)
        if items.numel() and (int(items.min()) < 0 or int(items.max()) >= self.n_items):
            raise ValueError(f"ItemCFPolicy: history item ids must lie in [0, {self.n_items})")
        self._scores = self.prior.expand(users.numel(), -1).clone()
        self._add(torch.repeat_interleave(torch.arange(users.numel()), lengths), items)
        self._folded = torch.zeros(users.numel(), dtype=torch.long)

    def act(self, state: BatchState) -> Tensor:
        """Fold in the item accepted last step, then pick greedily among running rows."""
        if state.batch_size != self._scores.shape[0]:
            raise ValueError("ItemCFPolicy.act: state batch differs from the last reset()")
        gap = state.step - self._folded
        if bool((gap > 1).any()):
            raise ValueError("ItemCFPolicy.act must be called at every step of the episode")
        # A running row's newest window item was accepted (a quit would have ended the row).
        fold = ((gap == 1) & state.active).nonzero().squeeze(1)
        self._add(fold, state.window_items[fold, -1])
        self._folded = state.step.clone()
        return _act_on_running(state, self._pick)

    def _pick(self, state: BatchState, rows: Tensor) -> Tensor:
        fresh = ~state.unavailable[rows]
        return greedy_pick(
            self._scores[rows],
            fresh,
            fresh,
            state.window_items[rows],
            self.vectors,
            self.tau,
            self.n_candidates,
        )


class OraclePolicy:
    """Greedily take the highest-rated item that keeps the user: a ceiling, not a baseline.

    It reads the ground-truth ratings and item vectors, so its numbers bound what a greedy
    policy can reach in this world (a greedy ceiling, not the optimum over the horizon).
    """

    name = "oracle"

    def __init__(self, world: UserWorld, n_candidates: int = 16) -> None:
        self.world = world
        self.n_candidates = n_candidates
        self._order = torch.zeros(0, world.n_items, dtype=torch.int32)

    def reset(self, users: Tensor) -> None:
        """Sort each user's items by true rating once, so a step reads only the head."""
        ratings = self.world.ratings[self.world.rows_of(users)]
        # Excluded (logged) items sort last, so the head holds only items the user may get.
        ratings = ratings.masked_fill(self.world.excluded_mask(users), -math.inf)
        # Stable: equal ratings go by item id, so runs are reproducible.
        order = torch.sort(ratings, dim=1, descending=True, stable=True).indices
        self._order = order.to(torch.int32)  # half the memory of B x I longs

    def act(self, state: BatchState) -> Tensor:
        """Pick for each running row the best safe item (rating >= 2, far enough, unseen)."""
        if state.batch_size != self._order.shape[0]:
            raise ValueError("OraclePolicy.act: state batch differs from the last reset()")
        return _act_on_running(state, self._pick)

    def _pick(self, state: BatchState, rows: Tensor) -> Tensor:
        world = self.world
        # At most `step` items are used up, so the head of the order holds the answer unless
        # the similarity rule rules out many; those rows get the full greedy search.
        k = min(world.n_items, int(state.step[rows].max()) + self.n_candidates)
        cand = self._order[rows, :k].long()
        flat = state.rows[rows].unsqueeze(1) * world.n_items + cand
        ok = (world.ratings.view(-1)[flat] >= 2.0) & ~state.unavailable[rows].gather(1, cand)
        window = state.window_items[rows]
        pick, found = first_safe(cand, ok, window, world.item_vectors, world.tau)
        rest = (~found).nonzero().squeeze(1)
        if rest.numel():
            ratings = world.ratings[state.rows[rows[rest]]]
            fresh = ~state.unavailable[rows[rest]]
            pick[rest] = greedy_pick(
                ratings,
                fresh & (ratings >= 2.0),
                fresh,
                window[rest],
                world.item_vectors,
                world.tau,
                self.n_candidates,
            )
        return pick


def _act_on_running(state: BatchState, pick) -> Tensor:
    """Run `pick(state, rows)` on running rows only; finished rows get item 0 (ignored)."""
    actions = torch.zeros(state.batch_size, dtype=torch.long)
    rows = state.active.nonzero().squeeze(1)
    if rows.numel():
        actions[rows] = pick(state, rows)
    return actions


def evaluate_policy(
    world: UserWorld,
    policy: Policy,
    users: Sequence[int],
    seed: int = 0,
    batch_size: int = 1024,
) -> pd.DataFrame:
    """Play one episode per user; return a row each: user, len, r_traj, r_each, quit_reason, steps.

    `seed` restarts the generator of policies that draw random numbers, so a call repeats
    exactly. Users are played in batches of `batch_size` (memory: B x n_items per batch).
    """
    if isinstance(policy, Reseedable):
        policy.reseed(seed)
    ids = torch.as_tensor(list(users), dtype=torch.long)
    if ids.numel() == 0:
        raise ValueError("evaluate_policy: no users")
    env = BatchedRecEnv(world)
    parts = []
    for chunk in ids.split(batch_size):
        state = env.reset(chunk)
        policy.reset(chunk)
        for _ in range(world.max_steps):
            if bool(state.done.all()):
                break
            env.step(policy.act(state))
            state = env.state
        if not bool(state.done.all()):
            raise RuntimeError("evaluate_policy: episodes still running after max_steps")
        length = state.length.numpy()
        r_traj = state.ret.numpy()
        parts.append(
            pd.DataFrame(
                {
                    "user": chunk.numpy(),
                    "len": length,
                    "r_traj": r_traj,
                    "r_each": np.where(length > 0, r_traj / np.maximum(length, 1), 0.0),
                    "quit_reason": [quit_reason(c) for c in state.quit_code.tolist()],
                    "steps": state.step.numpy(),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def summarize(df: pd.DataFrame) -> dict[str, float]:
    """Return the episode count and the mean Len, R_each and R_traj of `evaluate_policy` rows."""
    if df.empty:
        raise ValueError("summarize: no episodes")
    return {
        "episodes": len(df),
        "len": float(df["len"].mean()),
        "r_each": float(df["r_each"].mean()),
        "r_traj": float(df["r_traj"].mean()),
    }
