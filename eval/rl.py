"""RL baselines: A2C, DQN and PPO (Stable-Baselines3) trained in the train env, acting greedily.

They learn in the *train* world (training model, training users) on `RecVecEnv`: hundreds of
users at once in one batched env (same quit rule and rewards as `RecEnv`). The agent sees the
user's logged history, the episode window with its ratings, the elapsed share and K candidate
items, and picks one candidate (see `eval.rl_obs`). At test time the same `Encoder` serves the
test world's users and the network's best-scoring valid candidate is recommended.

A learning curve (R_traj of the greedy policy on fixed test and training users against env
steps) is measured during training when `curve_worlds` are given. Trained networks are saved as
a safetensors state dict plus a JSON config, stats and curve (no pickles) under
`policies/{algo}-seed{seed}/`; a later call with the same config and environment loads them.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from eval.rl_obs import Encoder, UserContext, item_features
from simulator.env import BatchState, UserWorld
from simulator.policies import evaluate_policy, summarize
from storage.files import atomic_write_bytes, atomic_write_json

__all__ = ["RL_METHODS", "RLConfig", "SB3Policy", "item_features", "rl_policy", "train"]

RL_METHODS: tuple[str, ...] = ("a2c", "dqn", "ppo")
WEIGHTS_FILE, CONFIG_FILE = "policy.safetensors", "config.json"
_FORMAT = "billp-sb3-policy/4"  # bump when the observation or action mapping changes

# Per-algorithm settings for many parallel users (RLConfig.algo_kwargs overrides).
_ALGO_KWARGS: dict[str, dict[str, Any]] = {
    "a2c": {"n_steps": 8, "learning_rate": 7e-4, "ent_coef": 0.01},
    "ppo": {"n_steps": 32, "batch_size": 2048, "n_epochs": 4, "learning_rate": 3e-4,
            "ent_coef": 0.01},
    "dqn": {"learning_rate": 3e-4, "learning_starts": 5_000, "batch_size": 256, "train_freq": 1,
            "gradient_steps": 1, "target_update_interval": 5_000, "exploration_fraction": 0.2,
            "exploration_final_eps": 0.05},
}  # fmt: skip
_N_ENVS = {"a2c": 256, "ppo": 256, "dqn": 64}
_GAMMA = {"a2c": 0.95, "ppo": 0.95, "dqn": 0.9}


@dataclass(kw_only=True)
class RLConfig:
    """Everything that determines a trained RL baseline (saved beside its weights)."""

    algo: str
    """a2c, dqn or ppo."""
    seed: int = 0
    """Seed of SB3 (network init, sampling) and of the training envs' user draws."""
    total_steps: int = 100_000
    """Training budget in env (user-)steps, summed over the parallel envs."""
    gamma: float | None = None
    """Discount (default: 0.95 for a2c and ppo, 0.9 for dqn)."""
    net_arch: list[int] = field(default_factory=lambda: [256, 256])
    """Hidden layer sizes of the policy / value / Q networks."""
    n_envs: int | None = None
    """Users played side by side (default: 256 for a2c and ppo, 64 for dqn)."""
    n_candidates: int = 16
    """K: the agent picks one of K candidates per step (see `eval.rl_obs`)."""
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
        if "batch_size" in kwargs and "n_steps" in kwargs:  # PPO: a batch fits in one rollout
            kwargs["batch_size"] = min(kwargs["batch_size"], kwargs["n_steps"] * self.envs())
        if self.algo == "dqn":
            # SB3's default 1M-transition buffer would take GBs; keep it to 200k transitions.
            kwargs.setdefault("buffer_size", min(self.total_steps, 200_000))
            kwargs["learning_starts"] = min(kwargs["learning_starts"], self.total_steps // 2)
        return kwargs

    def envs(self) -> int:
        """Return the users played side by side: fewer when one rollout would pass the budget."""
        rollout = int({**_ALGO_KWARGS[self.algo], **self.algo_kwargs}.get("n_steps", 1))
        return max(1, min(int(self.n_envs or 1), self.total_steps // rollout))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CurveWorld:
    """A world and fixed users on which the learning curve measures the greedy policy."""

    world: UserWorld
    users: list[int]


def _algo_class(algo: str):
    from stable_baselines3 import A2C, DQN, PPO

    return {"a2c": A2C, "dqn": DQN, "ppo": PPO}[algo]


def _policy_kwargs(config: RLConfig) -> dict[str, Any]:
    return {"net_arch": list(config.net_arch)}


class SB3Policy:
    """Act greedily with a trained SB3 network: its best-scoring valid candidate per row."""

    def __init__(self, name: str, net: nn.Module, encoder: Encoder) -> None:
        self.name = name
        self.net = net
        self.encoder = encoder
        self._ctx: UserContext | None = None
        self.train_stats: dict[str, Any] = {}
        """Training wall time, steps/s, curve, ... (as saved; `loaded` says if it was reused)."""

    def reset(self, users: torch.Tensor) -> None:
        """Compute the users' history features and item rankings."""
        self._ctx = self.encoder.start(users)

    @torch.no_grad()
    def scores(self, obs: torch.Tensor) -> torch.Tensor:
        """Return [B, K] candidate scores: Q-values (DQN) or policy logits (A2C, PPO)."""
        if hasattr(self.net, "q_net"):
            return self.net.q_net(obs)
        return self.net.get_distribution(obs).distribution.logits

    @torch.no_grad()
    def act(self, state: BatchState) -> torch.Tensor:
        """Score the candidates from the observation; take the best valid one."""
        if self._ctx is None or self._ctx.score.shape[0] != state.batch_size:
            raise ValueError(f"{self.name}: act() on a batch that reset() did not start")
        obs, cand, valid = self.encoder.encode(self._ctx, state)
        best = self.scores(obs).masked_fill(~valid, -math.inf).argmax(1)
        return self.encoder.items(cand, valid, best, state.active)


def _make_net(config: RLConfig, obs_dim: int) -> nn.Module:
    """Build an untrained policy network of the config's shape (weights are loaded into it)."""
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.dqn.policies import DQNPolicy

    obs_space = spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    cls = DQNPolicy if config.algo == "dqn" else ActorCriticPolicy
    action_space = spaces.Discrete(config.n_candidates)
    return cls(obs_space, action_space, lambda _: 0.0, **_policy_kwargs(config))


def world_fingerprint(world: UserWorld, encoder: Encoder, users: Sequence[int]) -> str:
    """Return a short digest of what training depends on: the train world and the encoder."""
    h = hashlib.sha256()
    for t in (encoder.vectors, encoder.item_bias, encoder.distance_vectors):
        h.update(t.detach().float().numpy().tobytes())
    h.update(world.ratings[:: max(world.n_users // 64, 1)].numpy().tobytes())  # a cheap sample
    excluded = getattr(world.excluded, "n_rows", None) is not None
    h.update(json.dumps([list(world.ratings.shape), world.tau, world.window, world.max_steps,
                         encoder.tau, excluded, [int(u) for u in users]]).encode())  # fmt: skip
    return h.hexdigest()[:16]


def measure(policy: SB3Policy, curve_worlds: Mapping[str, CurveWorld]) -> dict[str, float]:
    """Return the greedy policy's mean R_traj and Len on each curve world."""
    out: dict[str, float] = {}
    for name, cw in curve_worlds.items():
        stats = summarize(evaluate_policy(cw.world, policy, cw.users, seed=0))
        out[name] = round(stats["r_traj"], 3)
        out[f"{name}_len"] = round(stats["len"], 3)
    return out


def train(
    config: RLConfig,
    world: UserWorld,
    users: Sequence[int],
    encoder: Encoder,
    progress: Callable[[int, int], None] | None = None,
    curve_worlds: Mapping[str, CurveWorld] | None = None,
    curve_points: int = 20,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train `config.algo` for `config.total_steps` env steps; return the network and stats.

    Runs single-threaded (torch.set_num_threads(1), restored afterwards): the networks are small
    and per-step overhead dominates, so extra threads only contend on small shared machines.
    Stats: wall seconds (curve measurements excluded), steps per second, episodes, the mean
    training return of the last 1000 episodes and, with `curve_worlds`, the learning curve
    (`curve_points` + 1 measurements, the first before any training).
    """
    from stable_baselines3.common.callbacks import BaseCallback

    from eval.rl_env import RecVecEnv

    returns: list[float] = []
    curve: list[dict[str, Any]] = []
    report_every = max(config.total_steps // 100, 1)
    curve_every = max(config.total_steps // max(curve_points, 1), 1)
    clock = {"eval": 0.0, "start": 0.0}
    n_envs = config.envs()
    next_point = [curve_every]

    def point(model: Any, steps: int) -> None:
        started = time.perf_counter()
        policy = SB3Policy(config.algo, model.policy, encoder)
        elapsed = started - clock["start"] - clock["eval"]
        curve.append(
            {
                "steps": steps,
                "train_seconds": round(elapsed, 2),
                **measure(policy, curve_worlds or {}),
            }
        )
        model.policy.set_training_mode(False)
        clock["eval"] += time.perf_counter() - started

    class Watch(BaseCallback):
        def _on_step(self) -> bool:
            for done, info in zip(self.locals["dones"], self.locals["infos"], strict=True):
                if done:
                    returns.append(float(info["episode"]["r"]))
            n = self.num_timesteps
            if progress and n % report_every < n_envs:
                progress(min(n, config.total_steps), config.total_steps)
            if curve_worlds and n >= next_point[0]:
                point(self.model, n)
                next_point[0] = (n // curve_every + 1) * curve_every
            return True

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        venv = RecVecEnv(world, users, encoder, n_envs, seed=config.seed)
        model = _algo_class(config.algo)(
            "MlpPolicy",
            venv,
            seed=config.seed,
            device="cpu",
            policy_kwargs=_policy_kwargs(config),
            **config.sb3_kwargs(),
        )
        clock["start"] = time.perf_counter()
        if curve_worlds:
            point(model, 0)
        model.learn(total_timesteps=config.total_steps, callback=Watch())
        if curve_worlds and (not curve or curve[-1]["steps"] != model.num_timesteps):
            point(model, int(model.num_timesteps))
        seconds = time.perf_counter() - clock["start"] - clock["eval"]
    finally:
        torch.set_num_threads(threads)
    if progress:
        progress(config.total_steps, config.total_steps)
    stats = {
        "seconds": round(seconds, 2),
        "steps_per_second": round(model.num_timesteps / max(seconds, 1e-9), 1),
        "steps": int(model.num_timesteps),
        "episodes": len(returns),
        "train_return_first1000": round(float(np.mean(returns[:1000])), 4) if returns else None,
        "train_return_last1000": round(float(np.mean(returns[-1000:])), 4) if returns else None,
        "curve": curve,
        "curve_seconds": round(clock["eval"], 2),
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
    net = _make_net(config, identity["obs_dim"])
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
    encoder: Encoder,
    *,
    save_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    curve_worlds: Mapping[str, CurveWorld] | None = None,
    curve_points: int = 20,
) -> SB3Policy:
    """Return a trained RL policy: loaded from `save_dir` if it matches, else trained (and saved).

    `world`/`users` are the training world and users; `encoder` the observation and candidate
    mapping built from the training model (also used at test time).
    """
    if encoder.n_candidates != config.n_candidates:
        raise ValueError("rl_policy: encoder.n_candidates differs from config.n_candidates")
    identity = {
        "config": config.to_dict(),
        "obs_dim": encoder.obs_dim,
        "world": world_fingerprint(world, encoder, users),
    }
    loaded = load_policy(save_dir, identity) if save_dir is not None else None
    if loaded is None:
        net, stats = train(config, world, users, encoder, progress, curve_worlds, curve_points)
        if save_dir is not None:
            save_policy(save_dir, net, {"identity": identity, "stats": stats})
    else:
        net, stats = loaded
    policy = SB3Policy(config.algo, net, encoder)
    policy.train_stats = stats | {"loaded": loaded is not None}
    return policy
