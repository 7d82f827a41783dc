"""The non-LLM methods behind one interface: reference policies, the oracle ceiling, RL baselines.

`make_policy(name, bundle, seed=..., run_dir=...)` returns a `simulator.policies.Policy` for the
test world, so every method is evaluated by the same `evaluate_policy` call:

- random, popularity, itemcf: floors and the classic baseline, from training logs only;
- oracle: reads the ground-truth ratings, a *ceiling* (greedy), never a baseline;
- a2c, dqn, ppo: Stable-Baselines3 agents trained for `rl_steps` env steps in the train world
  (train model, training users), then acting greedily without repeats (see `eval.rl`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from eval.rl import RL_METHODS, RLConfig, rl_policy
from simulator.build import EnvBundle, reference_policies
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

DEFAULT_RL_STEPS = 100_000


def make_policy(
    name: str,
    bundle: EnvBundle,
    *,
    seed: int,
    run_dir: Path | None,
    rl_steps: int = DEFAULT_RL_STEPS,
    progress: Callable[[int, int], None] | None = None,
) -> Policy:
    """Return method `name` as a policy for `bundle`'s test world.

    RL methods train in the train world for `rl_steps` env steps (seeded by `seed`) and are saved
    under `run_dir/policies/{name}-seed{seed}/`; an existing save with the same config and
    environment is loaded instead (`run_dir=None`: train, keep nothing). `progress(done, total)`
    reports training steps. Reference methods ignore `run_dir`, `rl_steps` and `progress`.
    """
    if name not in POLICY_METHODS:
        raise ValueError(f"unknown policy method {name!r}; choose one of {POLICY_METHODS}")
    if name in REFERENCE_METHODS:
        policy = reference_policies(bundle, "test")[name]
        if isinstance(policy, Reseedable):
            policy.reseed(seed)
        return policy
    save_dir = None if run_dir is None else Path(run_dir) / "policies" / f"{name}-seed{seed}"
    return rl_policy(
        RLConfig(algo=name, seed=seed, total_steps=rl_steps),
        bundle.world("train"),
        bundle.train_users,
        bundle.train_model.item_vectors(),
        save_dir=save_dir,
        progress=progress,
    )
