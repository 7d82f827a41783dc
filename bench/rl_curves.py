"""RL learning curves: test-env R_traj of A2C, PPO and DQN against env steps, beside item-CF.

python -m bench.rl_curves [--quick] [--out FILE]

Each algorithm trains once per dataset (seed 0) for `CURVE_STEPS[algo]` env steps in the train
env, on hundreds of users at once (`eval.rl_env.RecVecEnv`); its greedy policy is measured at 20
points on the first 100 test users (test env) and 100 training users (train env). Trained
policies are cached under bench/out/policies/ (safetensors + JSON), so a rerun trains nothing
and reports the training time saved with them. Reference lines on the same 100 test users:
item-CF, the oracle (a ceiling), random, and `top candidate` (always the first candidate: what
the agents' candidate generator reaches alone, so the curve shows what RL adds to it).
`converged_steps`: the first measured step from which the test R_traj stays within 2% of the
plateau (the mean of the last three points); `eval.baselines.DEFAULT_RL_STEPS` comes from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bench.common import main as cli
from bench.quality import datasets
from eval.baselines import CURVE_USERS, DEFAULT_RL_STEPS, make_policy, rl_encoder
from eval.rl import RL_METHODS
from simulator.build import EnvConfig, build_env, reference_policies
from simulator.policies import evaluate_policy, summarize

POLICY_DIR = Path("bench/out/policies")
CURVE_STEPS = {"a2c": 500_000, "ppo": 500_000, "dqn": 200_000}
QUICK_STEPS = {"a2c": 20_000, "ppo": 20_000, "dqn": 20_000}


class TopCandidate:
    """Always recommend the first candidate: the agents' candidate generator on its own."""

    name = "top_candidate"

    def __init__(self, bundle: Any) -> None:
        self.encoder = rl_encoder(bundle)

    def reset(self, users: torch.Tensor) -> None:
        self._ctx = self.encoder.start(users)

    def act(self, state: Any) -> torch.Tensor:
        _, cand, valid = self.encoder.encode(self._ctx, state)
        first = torch.zeros(state.batch_size, dtype=torch.long)
        return self.encoder.items(cand, valid, first, state.active)


def converged_steps(curve: list[dict[str, Any]], tolerance: float = 0.02) -> int | None:
    """Return the first step from which test R_traj stays within `tolerance` of the plateau."""
    if len(curve) < 4:
        return None
    plateau = sum(p["test"] for p in curve[-3:]) / 3
    for i, point in enumerate(curve):
        if all(p["test"] >= (1 - tolerance) * plateau for p in curve[i:]):
            return int(point["steps"])
    return None


def references(bundle: Any, users: list[int]) -> dict[str, float]:
    """Return R_traj of the reference policies and the top candidate on `users` (test env)."""
    world = bundle.world("test")
    policies = reference_policies(bundle, "test")
    out = {}
    for name in ("random", "itemcf", "oracle"):
        out[name] = summarize(evaluate_policy(world, policies[name], users, seed=0))["r_traj"]
    out["top_candidate"] = summarize(evaluate_policy(world, TopCandidate(bundle), users))["r_traj"]
    return {k: round(v, 3) for k, v in out.items()}


def run(quick: bool = False) -> dict[str, Any]:
    """Train (or load) each algorithm per dataset with its curve; return curves and summaries."""
    torch.set_num_threads(1)
    budgets = QUICK_STEPS if quick else CURVE_STEPS
    out: dict[str, Any] = {}
    for dataset in datasets(quick):
        bundle = build_env(EnvConfig(dataset=dataset))
        users = list(bundle.test_users[:CURVE_USERS])
        entry: dict[str, Any] = {"reference": references(bundle, users), "algos": {}}
        for algo in RL_METHODS:
            run_dir = POLICY_DIR / f"{dataset}-curves{'-quick' if quick else ''}"
            policy = make_policy(
                algo, bundle, seed=0, run_dir=run_dir, rl_steps=budgets[algo], curve_points=20
            )
            stats = policy.train_stats
            curve = stats.get("curve", [])
            entry["algos"][algo] = {
                "steps": stats.get("steps"),
                "train_seconds": stats.get("seconds"),
                "steps_per_second": stats.get("steps_per_second"),
                "loaded": stats.get("loaded"),
                "converged_steps": converged_steps(curve),
                "final_test": curve[-1]["test"] if curve else None,
                "best_test": max(p["test"] for p in curve) if curve else None,
                "curve": curve,
            }
        out[dataset] = entry
    return {
        "rl_curves": out,
        "rl_curves_details": {
            "budgets": budgets,
            "default_rl_steps": DEFAULT_RL_STEPS,
            "curve_users": CURVE_USERS,
            "seed": 0,
            "note": "Greedy policy measured during training on fixed users; training seconds "
            "exclude the measurements and are those of the run that trained the cached policy.",
        },
    }


if __name__ == "__main__":
    cli(run, __doc__)
