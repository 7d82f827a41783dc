"""The non-LLM methods behind one interface: reference policies, the oracle ceiling, RL baselines.

`make_policy(name, bundle, seed=..., run_dir=...)` returns a `simulator.policies.Policy` for the
test world, so every method is evaluated by the same `evaluate_policy` call:

- random, popularity, itemcf: floors and the classic baseline, from training logs only;
- oracle: reads the ground-truth ratings, a *ceiling* (greedy), never a baseline;
- a2c, dqn, ppo: Stable-Baselines3 agents trained for `rl_steps` env steps in the train world
  (train model, training users), then re-ranking candidates greedily (see `eval.rl`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from eval.rl import RL_METHODS, CurveWorld, RLConfig, rl_policy
from eval.rl_obs import Encoder
from simulator.build import LEARNER_TAU_MARGIN, EnvBundle, distance_vectors, reference_policies
from simulator.policies import Policy, Reseedable

REFERENCE_METHODS: tuple[str, ...] = ("random", "popularity", "itemcf", "oracle")
POLICY_METHODS: tuple[str, ...] = (*REFERENCE_METHODS, *RL_METHODS)
METHOD_KINDS: dict[str, str] = {
    "random": "floor",
    "popularity": "baseline",
    "itemcf": "baseline",
    "oracle": "ceiling",
    "a2c": "rl",
    "dqn": "rl",
    "ppo": "rl",
}
"""What each method is, for tables: the oracle reads the ground truth and is a ceiling only."""

DEFAULT_RL_STEPS = 250_000
"""Training budget of the RL baselines (`--rl-steps`): their measured learning curves
(bench.rl_curves, BENCHMARKS.md) reach the plateau by ~225k env steps on Steam and Amazon."""
CURVE_USERS = 100
"""Test and training users (the first of each split) on which learning curves are measured."""
CURVE_POINTS = 10
"""Measurements per learning curve in experiments (bench.rl_curves takes 20)."""


def rl_encoder(bundle: EnvBundle, n_candidates: int = 16) -> Encoder:
    """Return the RL agents' observation/candidate encoder, built from training data only.

    The training model's item vectors and biases, its similarity geometry with item-CF's margin,
    the logged histories; logged items are excluded from candidates when the env excludes them.
    """
    model = bundle.train_model
    return Encoder(
        vectors=model.item_vectors(),
        item_bias=model.item_bias.weight.detach()[:, 0].clone(),
        distance_vectors=distance_vectors(model),
        tau=bundle.train_tau * LEARNER_TAU_MARGIN,
        histories=bundle.histories,
        excluded=bundle.excluded_mask,
        window=bundle.config.window,
        max_steps=bundle.config.max_steps,
        n_candidates=n_candidates,
    )


def curve_worlds(bundle: EnvBundle, n_users: int = CURVE_USERS) -> dict[str, CurveWorld]:
    """Return where learning curves are measured: the test world and the train world."""
    return {
        "test": CurveWorld(bundle.world("test"), list(bundle.test_users[:n_users])),
        "train": CurveWorld(bundle.world("train"), list(bundle.train_users[:n_users])),
    }


def make_policy(
    name: str,
    bundle: EnvBundle,
    *,
    seed: int,
    run_dir: Path | None,
    rl_steps: int = DEFAULT_RL_STEPS,
    progress: Callable[[int, int], None] | None = None,
    curves: bool = True,
    curve_points: int = CURVE_POINTS,
) -> Policy:
    """Return method `name` as a policy for `bundle`'s test world.

    RL methods train in the train world for `rl_steps` env steps (seeded by `seed`) and are saved
    under `run_dir/policies/{name}-seed{seed}/`; an existing save with the same config and
    environment is loaded instead (`run_dir=None`: train, keep nothing). `progress(done, total)`
    reports training steps; `curves` measures a learning curve during training (saved with the
    policy, `policy.train_stats["curve"]`). Reference methods ignore the RL arguments.
    """
    if name not in POLICY_METHODS:
        raise ValueError(f"unknown policy method {name!r}; choose one of {POLICY_METHODS}")
    if name in REFERENCE_METHODS:
        policy = reference_policies(bundle, "test")[name]
        if isinstance(policy, Reseedable):
            policy.reseed(seed)
        return policy
    save_dir = None if run_dir is None else Path(run_dir) / "policies" / f"{name}-seed{seed}"
    config = RLConfig(algo=name, seed=seed, total_steps=rl_steps)
    return rl_policy(
        config,
        bundle.world("train"),
        bundle.train_users,
        rl_encoder(bundle, config.n_candidates),
        save_dir=save_dir,
        progress=progress,
        curve_worlds=curve_worlds(bundle) if curves else None,
        curve_points=curve_points,
    )
