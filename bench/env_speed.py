"""Measure the simulator: env build time, single-env steps/s and batched user-steps/s.

python -m bench.env_speed --dataset synthetic [--batch 4096] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from simulator.build import EnvBundle, EnvConfig, build_env


def build_seconds(dataset: str) -> tuple[EnvBundle, dict[str, Any]]:
    """Return the bundle and how long a from-scratch build took (the card's own timer)."""
    started = time.perf_counter()
    bundle = build_env(EnvConfig(dataset=dataset))
    wall = time.perf_counter() - started
    return bundle, {"build_seconds": bundle.card.get("build_seconds"), "load_seconds": wall}


def single_env_steps_per_s(bundle: EnvBundle, seconds: float = 2.0, seed: int = 0) -> float:
    """Step one Gymnasium env with random actions for `seconds`; return steps per second."""
    env = bundle.make_env("test")
    rng = np.random.default_rng(seed)
    n_items = bundle.dataset.n_items
    env.reset(seed=seed)
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        _, _, terminated, truncated, _ = env.step(int(rng.integers(n_items)))
        steps += 1
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - started)


def batched_steps_per_s(bundle: EnvBundle, batch: int = 4096, seconds: float = 2.0) -> float:
    """Step the batched env over `batch` users with random actions; return user-steps per second.

    Every row stays active: finished rows are reset in place, so each counted step is real work.
    """
    env = bundle.make_batched_env("test")
    users = torch.as_tensor(bundle.test_users)
    rows = users[torch.randint(len(users), (batch,), generator=torch.Generator().manual_seed(0))]
    gen = torch.Generator().manual_seed(1)
    n_items = bundle.dataset.n_items
    env.reset(rows)
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        result = env.step(torch.randint(n_items, (batch,), generator=gen))
        steps += int(result.active.sum())
        if bool((~result.active).all()) or float((~env.state.active).float().mean()) > 0.5:
            env.reset(rows)
    return steps / (time.perf_counter() - started)


def measure(dataset: str, batch: int, seconds: float) -> dict[str, Any]:
    """Return every simulator number of one dataset."""
    bundle, timing = build_seconds(dataset)
    out: dict[str, Any] = {"dataset": dataset, **timing}
    out["env_steps_per_s"] = round(single_env_steps_per_s(bundle, seconds))
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        key = f"env_batched_steps_per_s_{threads}thread"
        out[key] = round(batched_steps_per_s(bundle, batch, seconds))
    out["env_batched_steps_per_s"] = max(v for k, v in out.items() if k.endswith("thread"))
    out["batch"] = batch
    out["policies"] = bundle.card["policies"]
    return out


def main() -> None:
    """Print the measurements of one dataset as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(json.dumps(measure(args.dataset, args.batch, args.seconds), indent=2))


if __name__ == "__main__":
    main()
