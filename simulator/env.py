"""The user simulator: the quit rule of BiLLP as a Gymnasium env and as a batched torch env.

Both envs play the same rules on the same `UserWorld`; the single env is a plain, readable
reference (and what RL libraries talk to), the batched env is what evaluation and baselines run.

Rules (BILLP.md §4): steps are numbered t = 1, 2, ...; an accepted item earns its rating; at
t >= 2 the user leaves when the rating is < 2 or when the item lies closer than `tau` (Euclidean,
on the world's item vectors) to one of the last `window` items recommended in this episode. A
repeat inside the window always quits; outside it, it does not. The quitting item earns 0 and is
not counted in Len. After `max_steps` accepted steps the episode is truncated.
Items a user already logged can be ruled out (`UserWorld.excluded`, from the build's
`logged_items="exclude"`): recommending one to that user raises ValueError in both envs.
When several quit causes hold at once, the reason reported is the first of: "repeat",
"low_rating", "similar" (a repeat names the agent's mistake most precisely).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from simulator.geometry import distance_threshold, window_distances  # noqa: F401 (re-exported)
from simulator.logged import Exclusions, logged_error
from simulator.rules import MIN_RATING_TO_STAY, judge

RUNNING, LOW_RATING, SIMILAR, REPEAT, MAX_STEPS = 0, 1, 2, 3, 4
QUIT_REASONS: tuple[str | None, ...] = (None, "low_rating", "similar", "repeat", "max_steps")
"""Quit reason by code: the batched env reports codes, the single env these strings."""


def quit_reason(code: int) -> str | None:
    """Return the quit reason string for a batched-env code (None while running)."""
    return QUIT_REASONS[int(code)]


@dataclass(frozen=True, eq=False)
class UserWorld:
    """Hold what an environment needs: ratings, item geometry and the quit-rule parameters.

    `ratings[row, item]` are calibrated ratings in [1, 5] (integers in a test env); row `r`
    belongs to the global dataset user `user_ids[r]`. `item_vectors` define item distance.
    `excluded` (optional; one list per row, or `Exclusions`) names items a row's user may never
    be recommended - their logged history under `logged_items="exclude"`; both envs refuse them.
    """

    ratings: Tensor
    item_vectors: Tensor
    tau: float
    user_ids: Tensor
    window: int = 4
    max_steps: int = 50
    excluded: Exclusions | Sequence[Sequence[int]] | None = None

    def __post_init__(self) -> None:
        ratings, vectors = self.ratings, self.item_vectors
        if not isinstance(ratings, Tensor) or ratings.ndim != 2:
            raise ValueError("UserWorld.ratings must be a 2-D tensor [n_users, n_items]")
        if not isinstance(vectors, Tensor) or vectors.ndim != 2:
            raise ValueError("UserWorld.item_vectors must be a 2-D tensor [n_items, d]")
        if vectors.shape[0] != ratings.shape[1]:
            raise ValueError(
                f"UserWorld: ratings has {ratings.shape[1]} items, item_vectors {vectors.shape[0]}"
            )
        ratings = ratings.detach().to(torch.float32).contiguous()
        vectors = vectors.detach().to(torch.float32).contiguous()
        if not bool(torch.isfinite(ratings).all()) or ratings.numel() == 0:
            raise ValueError("UserWorld.ratings must be non-empty and finite")
        low, high = float(ratings.min()), float(ratings.max())
        if low < 1.0 or high > 5.0:
            raise ValueError(f"UserWorld.ratings must lie in [1, 5], got [{low}, {high}]")
        if not bool(torch.isfinite(vectors).all()):
            raise ValueError("UserWorld.item_vectors must be finite")
        if not (math.isfinite(self.tau) and self.tau >= 0):
            raise ValueError(f"UserWorld.tau must be a finite number >= 0, got {self.tau}")
        ids = torch.as_tensor(np.asarray(self.user_ids)).reshape(-1)
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError("UserWorld.user_ids must be integers")
        ids = ids.to(torch.long)
        if ids.numel() != ratings.shape[0]:
            raise ValueError(
                f"UserWorld: {ids.numel()} user_ids for {ratings.shape[0]} rating rows"
            )
        if ids.unique().numel() != ids.numel():
            raise ValueError("UserWorld.user_ids must be unique")
        if self.window < 1 or self.max_steps < 1:
            raise ValueError("UserWorld.window and max_steps must be >= 1")
        object.__setattr__(self, "ratings", ratings)
        object.__setattr__(self, "item_vectors", vectors)
        object.__setattr__(self, "tau", float(self.tau))
        object.__setattr__(self, "user_ids", ids)
        excluded = self.excluded
        if excluded is not None and not isinstance(excluded, Exclusions):
            excluded = Exclusions.from_lists(list(excluded), ratings.shape[1])
        if excluded is not None and (excluded.n_rows, excluded.n_items) != tuple(ratings.shape):
            raise ValueError(
                f"UserWorld.excluded is {excluded.n_rows} rows x {excluded.n_items} items, "
                f"ratings {tuple(ratings.shape)}"
            )
        object.__setattr__(self, "excluded", excluded)
        object.__setattr__(self, "_row_by_id", {int(u): r for r, u in enumerate(ids.tolist())})
        sorted_ids, order = ids.sort()
        object.__setattr__(self, "_sorted_ids", sorted_ids)
        object.__setattr__(self, "_sort_order", order)

    @property
    def n_users(self) -> int:
        return self.ratings.shape[0]

    @property
    def n_items(self) -> int:
        return self.ratings.shape[1]

    def row_of(self, user_id: int) -> int:
        """Return the ratings row of a global user id."""
        try:
            return self._row_by_id[int(user_id)]  # type: ignore[attr-defined]
        except KeyError:
            raise ValueError(f"user {user_id} is not in this world's user_ids") from None

    def excluded_of(self, user_id: int) -> frozenset[int]:
        """Return the items this user may never be recommended (empty unless excluded)."""
        row = self.row_of(user_id)
        return frozenset() if self.excluded is None else self.excluded.row(row)

    def excluded_mask(self, user_ids: Tensor | Sequence[int]) -> Tensor:
        """Return a [B, n_items] bool mask of the items each user may never be recommended."""
        rows = self.rows_of(user_ids)
        if self.excluded is None:
            return torch.zeros(rows.numel(), self.n_items, dtype=torch.bool)
        return self.excluded.mask(rows)

    def rows_of(self, user_ids: Tensor | Sequence[int]) -> Tensor:
        """Return the ratings rows of many global user ids at once."""
        ids = torch.as_tensor(user_ids, dtype=torch.long).reshape(-1)
        pos = torch.searchsorted(self._sorted_ids, ids).clamp(max=self.n_users - 1)  # type: ignore[attr-defined]
        found = self._sorted_ids[pos] == ids  # type: ignore[attr-defined]
        if not bool(found.all()):
            missing = ids[~found][:5].tolist()
            raise ValueError(f"users {missing} are not in this world's user_ids")
        return self._sort_order[pos]  # type: ignore[attr-defined]


class RecEnv(gym.Env):
    """Serve one user session at a time under the BiLLP quit rule (Gymnasium API).

    Observation: the user's row, the last `window` recommended items (oldest first, padded in
    front with `n_items`), their ratings (0 for padding) and the steps taken so far.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (Gymnasium's convention)

    def __init__(self, world: UserWorld, users: Sequence[int] | None = None) -> None:
        super().__init__()
        self.world = world
        if users is None:
            self._rows = np.arange(world.n_users)
        else:
            self._rows = np.array([world.row_of(u) for u in users], dtype=np.int64)
            if self._rows.size == 0:
                raise ValueError("RecEnv: `users` is empty")
        n_items, w = world.n_items, world.window
        self.action_space = spaces.Discrete(n_items)
        self.observation_space = spaces.Dict(
            {
                "user": spaces.Discrete(world.n_users),
                "recent_items": spaces.MultiDiscrete([n_items + 1] * w),
                "recent_ratings": spaces.Box(0.0, 5.0, (w,), np.float32),
                "step": spaces.Discrete(world.max_steps + 1),
            }
        )
        self._ratings = world.ratings.numpy()
        self._vectors = world.item_vectors.numpy()
        self._tau = np.float32(world.tau)
        self._n_items, self._window, self._max_steps = n_items, w, world.max_steps
        self._row: int | None = None
        self._user = -1
        self._done = True

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Start a session for `options["user"]` (a global id), else a seeded random user."""
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"user"}
        if unknown:
            raise ValueError(f"RecEnv.reset: unknown options {sorted(unknown)}; only 'user'")
        if options.get("user") is not None:
            self._row = self.world.row_of(options["user"])
        else:
            self._row = int(self._rows[self.np_random.integers(self._rows.size)])
        self._user = int(self.world.user_ids[self._row])
        ex = self.world.excluded
        self._excluded = frozenset() if ex is None else ex.row(self._row)
        self._items: list[int] = []
        self._item_ratings: list[float] = []
        self._step, self._len, self._return, self._done = 0, 0, 0.0, False
        return self._obs(), self._info()

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Recommend item `action`; return the rating as reward unless the user leaves."""
        if self._row is None or self._done:
            raise RuntimeError("RecEnv.step called on a finished or unstarted episode; reset()")
        if isinstance(action, np.ndarray) and action.shape == ():
            action = action[()]
        if not isinstance(action, int | np.integer) or isinstance(action, bool):
            raise ValueError(f"action {action!r} is not an item id in [0, {self._n_items})")
        item = int(action)
        if not 0 <= item < self._n_items:
            raise ValueError(f"action {action!r} is not an item id in [0, {self._n_items})")
        if item in self._excluded:
            raise ValueError(logged_error(self._user, item))
        t = self._step + 1
        verdict = judge(
            rating=float(self._ratings[self._row, item]),
            item=item,
            recommended=self._items,
            vectors=self._vectors,
            tau=float(self._tau),
            window=self._window,
            max_steps=self._max_steps,
        )
        rating, reason, min_distance = verdict.rating, verdict.quit_reason, verdict.min_distance
        accepted, reward = verdict.accepted, verdict.reward
        truncated = reason == "max_steps"
        self._items.append(item)
        self._item_ratings.append(rating)
        self._step = t
        self._len += int(accepted)
        self._return += reward
        self._done = not accepted or truncated
        info = self._info() | {
            "rating": rating,
            "accepted": accepted,
            "quit_reason": reason,
            "min_distance": min_distance,
        }
        return self._obs(), reward, not accepted, truncated, info

    def _obs(self) -> dict[str, Any]:
        w = self._window
        items = np.full(w, self._n_items, dtype=np.int64)
        ratings = np.zeros(w, dtype=np.float32)
        recent = self._items[-w:]
        if recent:
            items[w - len(recent) :] = recent
            ratings[w - len(recent) :] = self._item_ratings[-w:]
        return {
            "user": np.int64(self._row),
            "recent_items": items,
            "recent_ratings": ratings,
            "step": np.int64(self._step),
        }

    def _info(self) -> dict[str, Any]:
        return {
            "user": self._user,
            "step": self._step,
            "len": self._len,
            "return": self._return,
        }


@dataclass
class BatchState:
    """Hold the batched env's per-row state, which policies read (the env replaces its tensors).

    `recommended[b, i]`: item i was recommended in row b's episode (while a row runs, every
    recommended item was accepted). `window_items`: the last `window` recommended items, oldest
    first, padded in front with `n_items`. `quit_code`: final reason code (0 while running).
    `excluded[b, i]`: item i may never be recommended to row b's user (their logged history
    under `logged_items="exclude"`); a policy picks among `~unavailable`.
    """

    users: Tensor
    rows: Tensor
    recommended: Tensor
    window_items: Tensor
    window_ratings: Tensor
    step: Tensor
    length: Tensor
    ret: Tensor
    done: Tensor
    quit_code: Tensor
    excluded: Tensor

    @property
    def unavailable(self) -> Tensor:
        """Return [B, n_items]: already recommended this episode, or excluded for the user."""
        return self.recommended | self.excluded

    @property
    def active(self) -> Tensor:
        return ~self.done

    @property
    def batch_size(self) -> int:
        return self.users.numel()


@dataclass(frozen=True)
class StepResult:
    """Report what one batched step did, per row; rows that were already done show zeros."""

    active: Tensor
    rating: Tensor
    reward: Tensor
    accepted: Tensor
    terminated: Tensor
    truncated: Tensor
    quit_code: Tensor
    min_distance: Tensor


class BatchedRecEnv:
    """Play the same rules as `RecEnv` for many users at once, vectorized in torch.

    Distances are computed only to each row's window (B x W x d), never item to item.
    """

    def __init__(self, world: UserWorld) -> None:
        self.world = world
        self.state: BatchState | None = None

    @torch.no_grad()
    def reset(self, users: Tensor | Sequence[int]) -> BatchState:
        """Start one episode per global user id in `users` (repeats allowed)."""
        ids = torch.as_tensor(users, dtype=torch.long).reshape(-1)
        if ids.numel() == 0:
            raise ValueError("BatchedRecEnv.reset: no users")
        w, b = self.world.window, ids.numel()
        self.state = BatchState(
            users=ids,
            rows=self.world.rows_of(ids),
            recommended=torch.zeros(b, self.world.n_items, dtype=torch.bool),
            window_items=torch.full((b, w), self.world.n_items, dtype=torch.long),
            window_ratings=torch.zeros(b, w),
            step=torch.zeros(b, dtype=torch.long),
            length=torch.zeros(b, dtype=torch.long),
            ret=torch.zeros(b, dtype=torch.float64),
            done=torch.zeros(b, dtype=torch.bool),
            quit_code=torch.zeros(b, dtype=torch.long),
            excluded=self.world.excluded_mask(ids),
        )
        return self.state

    @torch.no_grad()
    def step(self, actions: Tensor | Sequence[int]) -> StepResult:
        """Recommend `actions[b]` to every running row; finished rows ignore their action."""
        s = self.state
        if s is None:
            raise RuntimeError("BatchedRecEnv.step called before reset()")
        a = torch.as_tensor(actions)
        if a.shape != (s.batch_size,) or a.dtype.is_floating_point or a.dtype == torch.bool:
            raise ValueError(
                f"actions must be an integer tensor of shape ({s.batch_size},), "
                f"got {a.dtype} {tuple(a.shape)}"
            )
        a = a.to(torch.long)
        active = ~s.done
        n_items = self.world.n_items
        bad = active & ((a < 0) | (a >= n_items))
        if bool(bad.any()):
            row = int(bad.nonzero()[0])
            raise ValueError(
                f"action {int(a[row])} of row {row} is not an item id in [0, {n_items})"
            )
        refused = active & s.excluded.gather(1, a.clamp(0, n_items - 1).unsqueeze(1)).squeeze(1)
        if bool(refused.any()):
            row = int(refused.nonzero()[0])
            raise ValueError(f"row {row}: {logged_error(int(s.users[row]), int(a[row]))}")
        a = a.masked_fill(~active, 0)

        rows = torch.arange(s.batch_size)
        flat = s.rows * n_items + a
        rating = self.world.ratings.view(-1).index_select(0, flat)
        dist = window_distances(self.world.item_vectors, a.unsqueeze(1), s.window_items, n_items)
        min_distance = dist.squeeze(1).min(1).values
        repeat = (s.window_items == a.unsqueeze(1)).any(1)
        t = s.step + 1
        can_quit = active & (t >= 2)
        # Later assignments win, giving the documented priority repeat > low_rating > similar.
        code = torch.zeros_like(a)
        code = code.masked_fill(can_quit & (min_distance < self.world.tau), SIMILAR)
        code = code.masked_fill(can_quit & (rating < MIN_RATING_TO_STAY), LOW_RATING)
        code = code.masked_fill(can_quit & repeat, REPEAT)
        quit = code != RUNNING
        accepted = active & ~quit
        truncated = accepted & (t >= self.world.max_steps)
        code = code.masked_fill(truncated, MAX_STEPS)
        reward = torch.where(accepted, rating, torch.zeros_like(rating))

        s.recommended.view(-1)[(rows * n_items + a)[active]] = True
        keep = active.unsqueeze(1)
        shifted_items = torch.cat([s.window_items[:, 1:], a.unsqueeze(1)], 1)
        shifted_ratings = torch.cat([s.window_ratings[:, 1:], rating.unsqueeze(1)], 1)
        s.window_items = torch.where(keep, shifted_items, s.window_items)
        s.window_ratings = torch.where(keep, shifted_ratings, s.window_ratings)
        s.step = torch.where(active, t, s.step)
        s.length = s.length + accepted.long()
        s.ret = s.ret + reward.double()
        ended = quit | truncated
        s.quit_code = torch.where(ended, code, s.quit_code)
        s.done = s.done | ended
        return StepResult(
            active=active,
            rating=torch.where(active, rating, torch.zeros_like(rating)),
            reward=reward,
            accepted=accepted,
            terminated=quit,
            truncated=truncated,
            quit_code=code,
            min_distance=torch.where(active, min_distance, torch.full_like(min_distance, math.inf)),
        )
