"""Turn episode records into the paper's metrics, with honest uncertainty.

Per episode (BILLP.md §6): Len = accepted recommendations (the quitting step is not counted),
R_traj = the sum of their rewards, R_each = R_traj / Len (0 when Len is 0), plus what the run
cost (LLM calls, tokens, seconds) and how often grounding replaced the actor's answer.

Per method: the mean over test users for each seed, then the mean over seeds with a 95%
confidence half-width from Student's t (n = number of seeds). With a single seed the interval is
over episodes instead, and says so. Only episodes that finished count towards means; failed ones
are counted separately, never dropped silently.

scipy is not a dependency: `t_quantile_975` uses a table for df 1..30 (values rounded to 3
decimals, as printed in statistics texts) and the Cornish-Fisher expansion beyond, which is
accurate to 1e-3 there.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

QUIT_REASONS = ("low_rating", "similar", "repeat", "max_steps")
Z_975 = 1.959963984540054

# Two-sided 95% (upper 0.975) quantiles of Student's t for df = 1..30.
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """Return the 0.975 quantile of Student's t with `df` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T_975):
        return _T_975[df - 1]
    z, n = Z_975, float(df)
    # Cornish-Fisher expansion of t in powers of 1/df (Abramowitz & Stegun 26.7.5).
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / n + g2 / n**2 + g3 / n**3


def mean_ci(values: Sequence[float]) -> dict[str, float | None]:
    """Return {mean, ci95}: the sample mean and the t-based 95% half-width (None if n < 2)."""
    xs = [float(v) for v in values]
    if not xs:
        return {"mean": None, "ci95": None}
    n = len(xs)
    mean = math.fsum(xs) / n
    if n < 2:
        return {"mean": mean, "ci95": None}
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    return {"mean": mean, "ci95": t_quantile_975(n - 1) * math.sqrt(var / n)}


def episode_metrics(steps: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Return Len, R_traj, R_each and the quit reason of one episode from its step records."""
    accepted = [s for s in steps if s.get("accepted")]
    length = len(accepted)
    r_traj = math.fsum(float(s.get("reward", 0.0)) for s in accepted)
    return {
        "len": length,
        "r_traj": r_traj,
        "r_each": r_traj / length if length else 0.0,
        "quit_reason": steps[-1].get("quit_reason") if steps else None,
        "n_steps": len(steps),
    }


def usage_totals(usage: Mapping[str, Mapping[str, float]] | None) -> dict[str, float]:
    """Sum per-node usage {node: {calls, prompt_tokens, ...}} into one total."""
    total = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0}
    for counts in (usage or {}).values():
        for key in total:
            total[key] += counts.get(key, 0)
    return total


def _mean(values: Iterable[float]) -> float | None:
    xs = [float(v) for v in values]
    return math.fsum(xs) / len(xs) if xs else None


def summarize_method(
    episodes: Sequence[Mapping[str, Any]], oracle_r_traj: float | None = None
) -> dict[str, Any]:
    """Summarize one method's test episodes (all seeds) into the results.json entry.

    `oracle_r_traj` is the oracle's mean R_traj on the same users and seeds; pct_oracle is this
    method's mean R_traj as a percentage of it.
    """
    ok = [e for e in episodes if e.get("status") == "ok"]
    seeds = sorted({int(e["seed"]) for e in episodes})
    per_seed: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        mine = [e for e in ok if int(e["seed"]) == seed]
        per_seed[str(seed)] = {
            "episodes": len(mine),
            **{k: _mean(e[k] for e in mine) for k in ("len", "r_each", "r_traj")},
        }
    out: dict[str, Any] = {}
    usable = [s for s in per_seed.values() if s["episodes"]]
    over = "seeds" if len(usable) > 1 else "episodes"
    for key in ("len", "r_each", "r_traj"):
        values = [s[key] for s in usable] if over == "seeds" else [e[key] for e in ok]
        out[key] = mean_ci(values)
    mean_r = out["r_traj"]["mean"]
    pct = None
    if oracle_r_traj and mean_r is not None:
        pct = 100.0 * mean_r / oracle_r_traj
    reasons = Counter(str(e.get("quit_reason")) for e in ok)
    steps = sum(e.get("n_steps", 0) for e in ok)
    out.update(
        pct_oracle=pct,
        episodes=len(ok),
        failed_episodes=len(episodes) - len(ok),
        seeds=len(seeds),
        ci_over=over,
        llm_calls_per_episode=_mean(e.get("llm_calls", 0) for e in ok),
        prompt_tokens_per_episode=_mean(e.get("prompt_tokens", 0) for e in ok),
        completion_tokens_per_episode=_mean(e.get("completion_tokens", 0) for e in ok),
        seconds_per_episode=_mean(e.get("seconds", 0.0) for e in ok),
        cache_hits_per_episode=_mean(e.get("cache_hits", 0) for e in ok),
        fallbacks_per_episode=_mean(e.get("fallbacks", 0) for e in ok),
        grounding_replacement_rate=(
            sum(e.get("replaced", 0) for e in ok) / steps if steps else None
        ),
        quit_reasons={r: reasons.get(r, 0) for r in (*QUIT_REASONS, *sorted(reasons))},
        per_seed=per_seed,
    )
    return out


def oracle_mean(episodes: Sequence[Mapping[str, Any]]) -> float | None:
    """Return the oracle's mean R_traj over seeds (mean of per-seed means), or None."""
    ok = [e for e in episodes if e.get("status") == "ok"]
    by_seed: dict[int, list[float]] = {}
    for e in ok:
        by_seed.setdefault(int(e["seed"]), []).append(float(e["r_traj"]))
    means = [math.fsum(v) / len(v) for v in by_seed.values() if v]
    return math.fsum(means) / len(means) if means else None


def cumulative_rewards(episodes: Sequence[Mapping[str, Any]], horizon: int) -> list[float]:
    """Return the mean cumulative reward after each step 1..horizon over finished episodes.

    An episode that ended keeps its final total, so the curve shows what a session is worth by
    step t, counting sessions that ended early.
    """
    ok = [e for e in episodes if e.get("status") == "ok"]
    if not ok:
        return []
    sums = [0.0] * horizon
    for e in ok:
        total = 0.0
        rewards = [float(s.get("reward", 0.0)) for s in e.get("steps", [])]
        for t in range(horizon):
            if t < len(rewards):
                total += rewards[t]
            sums[t] += total
    return [s / len(ok) for s in sums]
