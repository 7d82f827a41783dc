"""RL baselines: A2C, DQN and PPO (Stable-Baselines3) trained in the train env, acting greedily.

The agent sees what a recommender could log, never the ground truth: the training model's item
vectors of the last `window` recommended items (zeros for padding), their ratings / 5 and the
share of the episode elapsed (step / max_steps). Its action is an item id. It learns in the
*train* world (`RecEnv` over training users, the env's own quit rule) and is evaluated in the test
world as a `Policy`: deterministic, taking the best-scoring item not yet recommended in the episode.

Trained networks are saved as a safetensors state dict plus a JSON config (no pickles) under
`policies/{algo}-seed{seed}/`; a later call with the same config and environment loads them.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor, nn

from simulator.env import BatchState, RecEnv, UserWorld
from simulator.files import atomic_write_bytes, atomic_write_json

RL_METHODS: tuple[str, ...] = ("a2c", "dqn", "ppo")
WEIGHTS_FILE, CONFIG_FILE = "policy.safetensors", "config.json"
_FORMAT = "billp-sb3-policy/1"

# Per-algorithm settings for ~100k-step budgets on 2k-13k actions (RLConfig.algo_kwargs overrides).
_ALGO_KWARGS: dict[str, dict[str, Any]] = {
    "a2c": {"n_steps": 8, "learning_rate": 7e-4, "ent_coef": 0.01},
    "ppo": {"n_steps": 256, "batch_size": 256, "n_epochs": 4, "learning_rate": 3e-4,
            "ent_coef": 0.01},
    "dqn": {"learning_rate": 1e-4, "learning_starts": 1000, "batch_size": 128, "train_freq": 2,
            "target_update_interval": 1000, "exploration_fraction": 0.3,
            "exploration_final_eps": 0.05},
}  # fmt: skip
_N_ENVS = {"a2c": 8, "ppo": 8, "dqn": 4}
# Measured on synthetic (30k steps, seeds 0-1): DQN's greedy policy collapses at gamma 0.95
# (bootstrapping a max over thousands of noisy Q-values), A2C/PPO do worse at 0.5.
_GAMMA = {"a2c": 0.95, "ppo": 0.95, "dqn": 0.5}


@dataclass(kw_only=True)
class RLConfig:
    """Everything that determines a trained RL baseline (saved beside its weights)."""

    algo: str
    """a2c, dqn or ppo."""
    seed: int = 0
    """Seed of SB3 (network init, sampling) and of the training envs' user draws."""
    total_steps: int = 100_000
    """Training budget in env steps (summed over the parallel envs)."""
    gamma: float | None = None
    """Discount (default: 0.95 for a2c and ppo, 0.5 for dqn, as BiLLP's critic uses)."""
    net_arch: list[int] = field(default_factory=lambda: [128, 128])
    """Hidden layer sizes of the policy / value / Q networks."""
    n_envs: int | None = None
    """Parallel training envs (default: 8 for a2c and ppo, 4 for dqn)."""
    algo_kwargs: dict[str, Any] = field(default_factory=dict)
    """Overrides of the SB3 algorithm arguments in `_ALGO_KWARGS`."""

    def __post_init__(self) -> None:
        if self.algo not in RL_METHODS:
            raise ValueError(f"RLConfig.algo must be one of {RL_METHODS}, got {self.algo!r}")
        if self.total_steps < 1:
            raise ValueError(f"RLConfig.total_steps must be >= 1, got {self.total_steps}")
        if self.n_envs is None:
            self.n_envs = _N_ENVS[self.algo]
        if self.gamma is None:
            self.gamma = _GAMMA[self.algo]

    def sb3_kwargs(self) -> dict[str, Any]:
        """Return the algorithm's constructor arguments (policy and env aside)."""
        kwargs = {**_ALGO_KWARGS[self.algo], **self.algo_kwargs, "gamma": self.gamma}
        if self.algo == "dqn":
            # SB3's default 1M-transition buffer would take GBs; the budget never needs more.
            kwargs.setdefault("buffer_size", min(self.total_steps, 100_000))
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def item_features(item_vectors: Tensor) -> Tensor:
    """Return the vectors the agent sees: scaled to unit RMS entry, plus a zero row for padding.

    Scaling keeps features O(1) whatever the user model's embedding scale; row `n_items` (the
    env's padding id) maps to zeros.
    """
    vectors = item_vectors.detach().to(torch.float32)
    rms = vectors.square().mean().sqrt().clamp_min(1e-8)
    return torch.cat([vectors / rms, torch.zeros(1, vectors.shape[1])]).contiguous()


def observation(
    features: Tensor, window_items: Tensor, window_ratings: Tensor, step: Tensor, max_steps: int
) -> Tensor:
    """Return [B, W*d + W + 1] observations: window item features, ratings / 5, step / max.

    `window_items` [B, W] use `n_items` as padding (oldest first), as both envs do; the training
    wrapper and the test-time policy call this one function, so they see identical features.
    """
    b = window_items.shape[0]
    vecs = features.index_select(0, window_items.reshape(-1)).view(b, -1)
    ratings = window_ratings.to(torch.float32).view(b, -1) / 5.0
    progress = step.to(torch.float32).view(b, 1) / max_steps
    return torch.cat([vecs, ratings, progress], 1)


class WindowObservation(gym.ObservationWrapper):
    """Expose a `RecEnv` with the agent's observation vector instead of its dict observation.

    Computes `observation()` for one row in numpy (torch's per-call overhead would dominate a
    training step); tests check both give the same vector.
    """

    def __init__(self, env: RecEnv, features: Tensor) -> None:
        super().__init__(env)
        world = env.world
        self._features, self._max_steps = features.numpy(), world.max_steps
        dim = world.window * features.shape[1] + world.window + 1
        self.observation_space = spaces.Box(-np.inf, np.inf, (dim,), np.float32)

    def observation(self, obs: dict[str, Any]) -> np.ndarray:
        return np.concatenate(
            [
                self._features[obs["recent_items"]].reshape(-1),
                obs["recent_ratings"].astype(np.float32) / np.float32(5.0),
                np.array([obs["step"] / self._max_steps], dtype=np.float32),
            ]
        )


def _algo_class(algo: str):
    from stable_baselines3 import A2C, DQN, PPO

    return {"a2c": A2C, "dqn": DQN, "ppo": PPO}[algo]


def _policy_kwargs(config: RLConfig) -> dict[str, Any]:
    return {"net_arch": list(config.net_arch)}


class SB3Policy:
    """Act greedily with a trained SB3 network: best-scoring item not yet recommended per row."""

    def __init__(self, name: str, net: nn.Module, features: Tensor, max_steps: int) -> None:
        self.name = name
        self.net = net.eval()
        self.features, self.max_steps = features, max_steps
        self.train_stats: dict[str, Any] = {}
        """Training wall time, steps/s, ... (as saved; `loaded` says whether it was reused)."""

    def reset(self, users: Tensor) -> None:
        """Keep nothing: the observation is built from the state alone."""

    @torch.no_grad()
    def scores(self, obs: Tensor) -> Tensor:
        """Return [B, n_items] action scores: Q-values (DQN) or policy logits (A2C, PPO)."""
        if hasattr(self.net, "q_net"):
            return self.net.q_net(obs)
        return self.net.get_distribution(obs).distribution.logits

    @torch.no_grad()
    def act(self, state: BatchState) -> Tensor:
        """Score every item from the window observation; mask recommended ones; take the best."""
        obs = observation(
            self.features, state.window_items, state.window_ratings, state.step, self.max_steps
        )
        scores = self.scores(obs).masked_fill(state.recommended, -math.inf)
        stuck = state.active & ~(~state.recommended).any(1)
        if bool(stuck.any()):
            raise ValueError(f"row {int(stuck.nonzero()[0])}: every item was already recommended")
        return scores.argmax(1)


def _make_net(config: RLConfig, obs_dim: int, n_items: int) -> nn.Module:
    """Build an untrained policy network of the config's shape (weights are loaded into it)."""
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.dqn.policies import DQNPolicy

    obs_space = spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    cls = DQNPolicy if config.algo == "dqn" else ActorCriticPolicy
    return cls(obs_space, spaces.Discrete(n_items), lambda _: 0.0, **_policy_kwargs(config))


def world_fingerprint(world: UserWorld, features: Tensor, users: Sequence[int]) -> str:
    """Return a short digest of what training depends on: the train world and the features."""
    h = hashlib.sha256()
    h.update(features.numpy().tobytes())
    h.update(world.ratings[:: max(world.n_users // 64, 1)].numpy().tobytes())  # a cheap sample
    h.update(json.dumps([list(world.ratings.shape), world.tau, world.window, world.max_steps,
                         [int(u) for u in users]]).encode())  # fmt: skip
    return h.hexdigest()[:16]


def train(
    config: RLConfig,
    world: UserWorld,
    users: Sequence[int],
    features: Tensor,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train `config.algo` for `config.total_steps` env steps; return the network and stats.

    Runs single-threaded (torch.set_num_threads(1), restored afterwards): the networks are small
    and per-step overhead dominates, so extra threads only contend on small shared machines.
    Stats: wall seconds, steps per second, episodes and the mean training return of the last 100.
    """
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import DummyVecEnv

    def make_env() -> gym.Env:
        return WindowObservation(RecEnv(world, users=users), features)

    returns: list[float] = []
    report_every = max(config.total_steps // 100, 1)

    class Watch(BaseCallback):
        def _on_step(self) -> bool:
            for done, info in zip(self.locals["dones"], self.locals["infos"], strict=True):
                if done:
                    returns.append(float(info["return"]))
            if progress and self.num_timesteps % report_every < (config.n_envs or 1):
                progress(min(self.num_timesteps, config.total_steps), config.total_steps)
            return True

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        venv = DummyVecEnv([make_env] * int(config.n_envs or 1))
        venv.seed(config.seed)
        model = _algo_class(config.algo)(
            "MlpPolicy",
            venv,
            seed=config.seed,
            device="cpu",
            policy_kwargs=_policy_kwargs(config),
            **config.sb3_kwargs(),
        )
        started = time.perf_counter()
        model.learn(total_timesteps=config.total_steps, callback=Watch())
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
    if progress:
        progress(config.total_steps, config.total_steps)
    stats = {
        "seconds": round(seconds, 2),
        "steps_per_second": round(model.num_timesteps / max(seconds, 1e-9), 1),
        "steps": int(model.num_timesteps),
        "episodes": len(returns),
        "train_return_last100": round(float(np.mean(returns[-100:])), 4) if returns else None,
    }
    return model.policy, stats


def save_policy(path: Path, net: nn.Module, meta: dict[str, Any]) -> None:
    """Write the network's state dict (safetensors), then the JSON config (its presence = done)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    atomic_write_bytes(path / WEIGHTS_FILE, save_tensors(tensors))
    atomic_write_json(path / CONFIG_FILE, {"format": _FORMAT, **meta})


def load_policy(path: Path, identity: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]] | None:
    """Return the saved network and its training stats if `path` holds one for `identity`."""
    try:
        meta = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != _FORMAT or meta.get("identity") != identity:
        return None
    config = RLConfig(**identity["config"])
    net = _make_net(config, identity["obs_dim"], identity["n_items"])
    try:
        state = load_tensors((path / WEIGHTS_FILE).read_bytes())
        net.load_state_dict(state)
    except (OSError, RuntimeError, ValueError) as err:
        raise ValueError(
            f"{path / WEIGHTS_FILE} does not match {path / CONFIG_FILE} ({err}); delete the "
            "folder to retrain"
        ) from err
    return net, meta.get("stats", {})


def rl_policy(
    config: RLConfig,
    world: UserWorld,
    users: Sequence[int],
    item_vectors: Tensor,
    *,
    save_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SB3Policy:
    """Return a trained RL policy: loaded from `save_dir` if it matches, else trained (and saved).

    `world`/`users` are the training world and users; `item_vectors` the training model's.
    Observations are normalized by the training world's `max_steps` at test time too.
    """
    features = item_features(item_vectors)
    obs_dim = world.window * features.shape[1] + world.window + 1
    identity = {
        "config": config.to_dict(),
        "obs_dim": obs_dim,
        "n_items": world.n_items,
        "world": world_fingerprint(world, features, users),
    }
    loaded = load_policy(save_dir, identity) if save_dir is not None else None
    if loaded is None:
        net, stats = train(config, world, users, features, progress)
        if save_dir is not None:
            save_policy(save_dir, net, {"identity": identity, "stats": stats})
    else:
        net, stats = loaded
    policy = SB3Policy(config.algo, net, features, world.max_steps)
    policy.train_stats = stats | {"loaded": loaded is not None}
    return policy
