"""The batched torch env behind Stable-Baselines3's `VecEnv` interface: thousands of users at once.

Each of the `num_envs` slots plays one user's episode in a single `BatchedRecEnv` (same quit rule
and rewards as `RecEnv`); when a slot's episode ends, it starts a new one with a training user
drawn by a seeded generator, the way SB3's own vector envs auto-reset: the step returns the new
episode's first observation, and `infos[i]` carries `terminal_observation`,
`TimeLimit.truncated` and `episode` ({"r": R_traj, "l": Len}) for SB3's bookkeeping.
Observations and actions are the `Encoder`'s (candidate re-ranking, Discrete(K)).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv

from eval.rl_obs import Encoder, UserContext
from simulator.env import BatchedRecEnv, BatchState, UserWorld


def _take(obj: Any, rows: torch.Tensor) -> Any:
    """Return a copy of a per-row dataclass (state, context) holding only `rows`."""
    return dataclasses.replace(
        obj, **{f.name: getattr(obj, f.name)[rows] for f in dataclasses.fields(obj)}
    )


class RecVecEnv(VecEnv):
    """Play `num_envs` episodes side by side over `users` of `world`, as one SB3 `VecEnv`."""

    def __init__(
        self, world: UserWorld, users: Sequence[int], encoder: Encoder, num_envs: int, seed: int = 0
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"RecVecEnv: num_envs must be >= 1, got {num_envs}")
        if not users:
            raise ValueError("RecVecEnv: no users")
        self.world, self.encoder = world, encoder
        self.users = torch.as_tensor(list(users), dtype=torch.long)
        world.rows_of(self.users)  # fail early on unknown users
        self.env = BatchedRecEnv(world)
        self._scratch = BatchedRecEnv(world)
        self._gen = torch.Generator().manual_seed(seed)
        self._actions: np.ndarray | None = None
        self._ctx: UserContext | None = None
        self._cand = self._valid = torch.zeros(0)
        self.last_items = torch.zeros(0, dtype=torch.long)
        """The items recommended by the last step, per slot (what the actions mapped to)."""
        obs_space = spaces.Box(-np.inf, np.inf, (encoder.obs_dim,), np.float32)
        super().__init__(num_envs, obs_space, spaces.Discrete(encoder.n_candidates))

    @property
    def state(self) -> BatchState:
        """The batched env's state (read by tests and by the episode bookkeeping)."""
        if self.env.state is None:
            raise RuntimeError("RecVecEnv: call reset() first")
        return self.env.state

    def _draw(self, n: int) -> torch.Tensor:
        return self.users[torch.randint(self.users.numel(), (n,), generator=self._gen)]

    def reset(self) -> np.ndarray:
        """Start a fresh episode in every slot (honours a pending `seed()`)."""
        seed = self._seeds[0]
        if seed is not None:
            self._gen.manual_seed(int(seed))
        self._reset_seeds()
        users = self._draw(self.num_envs)
        self.env.reset(users)
        self._ctx = self.encoder.start(users)
        return self._observe()

    def _observe(self) -> np.ndarray:
        assert self._ctx is not None
        obs, self._cand, self._valid = self.encoder.encode(self._ctx, self.state)
        return obs.numpy()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(-1)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Recommend each slot's chosen candidate; restart the slots whose episode ended."""
        if self._actions is None or self._ctx is None:
            raise RuntimeError("RecVecEnv: call reset() and step_async() before step_wait()")
        s = self.state
        actions = torch.as_tensor(self._actions, dtype=torch.long)
        items = self.encoder.items(self._cand, self._valid, actions, ~s.done)
        self.last_items = items
        self._actions = None
        result = self.env.step(items)
        s = self.state
        done = s.done.clone()
        rewards = result.reward.numpy().astype(np.float32)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        ended = done.nonzero().squeeze(1)
        if ended.numel():
            terminal = self.encoder.encode(_take(self._ctx, ended), _take(s, ended))[0].numpy()
            truncated = result.truncated & ~result.terminated
            for j, row in enumerate(ended.tolist()):
                infos[row] = {
                    "terminal_observation": terminal[j],
                    "TimeLimit.truncated": bool(truncated[row]),
                    "episode": {"r": float(s.ret[row]), "l": int(s.length[row]), "t": 0.0},
                    "user": int(s.users[row]),
                    "quit_code": int(s.quit_code[row]),
                }
            self._restart(ended)
        return self._observe(), rewards, done.numpy(), infos

    def _restart(self, rows: torch.Tensor) -> None:
        """Start new episodes in `rows` only: copy a fresh state's rows over the finished ones."""
        users = self._draw(rows.numel())
        fresh = self._scratch.reset(users)
        s = self.state
        for f in dataclasses.fields(s):
            getattr(s, f.name)[rows] = getattr(fresh, f.name)
        ctx, new = self._ctx, self.encoder.start(users)
        assert ctx is not None
        for f in dataclasses.fields(ctx):
            getattr(ctx, f.name)[rows] = getattr(new, f.name)

    def close(self) -> None:
        """Nothing to release: the env holds tensors only."""

    # SB3 asks sub-envs for attributes; the slots share one env, so every slot answers alike.
    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        if attr_name == "render_mode":
            return [None for _ in self._get_indices(indices)]
        value = getattr(self, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        raise AttributeError(f"RecVecEnv: slots share one env; cannot set {attr_name!r} per slot")

    def env_method(self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any) -> list:
        method = getattr(self, method_name)
        return [method(*args, **kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: Any = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]
