"""Measure the simulator: env build time, single-env steps/s and batched user-steps/s.

python -m bench.env_speed [--quick] [--out FILE]
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from bench.common import main as cli
from simulator.build import EnvBundle, EnvConfig, build_env
from simulator.paths import data_dir


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
    _, info = env.reset(seed=seed)
    excluded = env.world.excluded_of(info["user"])  # the user's logged items: refused by the env
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        item = int(rng.integers(n_items))
        while item in excluded:
            item = int(rng.integers(n_items))
        _, _, terminated, truncated, _ = env.step(item)
        steps += 1
        if terminated or truncated:
            _, info = env.reset()
            excluded = env.world.excluded_of(info["user"])
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
        actions = torch.randint(n_items, (batch,), generator=gen)
        refused = env.state.excluded.gather(1, actions[:, None]).squeeze(1)  # logged items
        while bool(refused.any()):
            actions[refused] = torch.randint(n_items, (int(refused.sum()),), generator=gen)
            refused = env.state.excluded.gather(1, actions[:, None]).squeeze(1)
        result = env.step(actions)
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
    card = bundle.card
    out["policies"] = card["policies"]
    out["card"] = {
        "logged_items": card.get("logged_items"),
        "planning_gap": card.get("planning_gap"),
        "auc": (card.get("user_model") or {}).get("auc"),
        "popularity_auc": (card.get("user_model") or {}).get("popularity_auc"),
        "verdict": card.get("verdict"),
    }
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Measure every dataset present (quick: synthetic only); headline numbers from the main one.

    The main dataset is steam when the real data is present (else synthetic), so the top-level
    `env_steps_per_s` / `env_batched_steps_per_s` describe the environment experiments use.
    """
    names = ["synthetic"] if quick else ["synthetic", *real_datasets()]
    seconds = 1.0 if quick else 3.0
    per = {name: measure(name, batch=4096, seconds=seconds) for name in names}
    main_name = names[-1] if "steam" not in per else "steam"
    return {
        "env_steps_per_s": per[main_name]["env_steps_per_s"],
        "env_batched_steps_per_s": per[main_name]["env_batched_steps_per_s"],
        "env": {"headline_dataset": main_name, "datasets": per},
    }


def real_datasets() -> list[str]:
    """Return the real datasets whose files are reachable (see simulator.paths.data_dir)."""
    root = data_dir()
    return [d for d in ("steam", "amazon") if root is not None and (root / d).is_dir()]


if __name__ == "__main__":
    cli(run, __doc__)
