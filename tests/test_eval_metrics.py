"""Metrics: t quantiles and confidence intervals on known samples, and the per-episode rules."""

from __future__ import annotations

import math

import pytest

from eval.metrics import (
    cumulative_rewards,
    episode_metrics,
    mean_ci,
    oracle_mean,
    summarize_method,
    t_quantile_975,
)


@pytest.mark.parametrize(
    ("df", "expected"),
    # Reference values of the 0.975 quantile (statistical tables / scipy.stats.t.ppf).
    [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042), (31, 2.0395),
     (40, 2.0211), (60, 2.0003), (120, 1.9799), (1000, 1.9623)],
)  # fmt: skip
def test_t_quantiles_match_tables(df, expected):
    assert t_quantile_975(df) == pytest.approx(expected, abs=6e-4)


def test_t_quantile_rejects_zero_df():
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile_975(0)


def test_mean_ci_on_known_samples():
    # 1..5: mean 3, sd sqrt(2.5), se sqrt(0.5); t(4) = 2.776 -> 1.963
    out = mean_ci([1, 2, 3, 4, 5])
    assert out["mean"] == pytest.approx(3.0)
    assert out["ci95"] == pytest.approx(2.776 * math.sqrt(0.5), rel=1e-9)
    # two values 10, 14: mean 12, sd 2*sqrt(2), se 2; t(1) = 12.706
    assert mean_ci([10, 14])["ci95"] == pytest.approx(12.706 * 2)
    assert mean_ci([7.0]) == {"mean": 7.0, "ci95": None}
    assert mean_ci([]) == {"mean": None, "ci95": None}
    assert mean_ci([2, 2, 2])["ci95"] == 0.0


def test_episode_metrics_do_not_count_the_quitting_step():
    steps = [
        {"accepted": True, "reward": 4.0, "quit_reason": None},
        {"accepted": True, "reward": 5.0, "quit_reason": None},
        {"accepted": False, "reward": 0.0, "quit_reason": "similar"},
    ]
    m = episode_metrics(steps)
    assert (m["len"], m["r_traj"], m["r_each"], m["quit_reason"]) == (2, 9.0, 4.5, "similar")
    empty = episode_metrics([{"accepted": False, "reward": 0.0, "quit_reason": "low_rating"}])
    assert empty["len"] == 0 and empty["r_each"] == 0.0


def _ep(seed, r_traj, length=2, status="ok", reason="similar"):
    return {
        "seed": seed,
        "status": status,
        "len": length,
        "r_traj": r_traj,
        "r_each": r_traj / length,
        "quit_reason": reason,
        "n_steps": length + 1,
        "llm_calls": 3,
        "replaced": 1,
        "steps": [{"reward": r_traj / length}] * length,
    }


def test_summary_is_over_seeds_and_counts_failures():
    episodes = [_ep(0, 8.0), _ep(0, 10.0), _ep(1, 12.0), _ep(1, 14.0), _ep(1, 0, status="failed")]
    s = summarize_method(episodes, oracle_r_traj=22.0)
    assert s["ci_over"] == "seeds" and s["seeds"] == 2
    assert s["r_traj"]["mean"] == pytest.approx(11.0)  # seed means 9 and 13
    assert s["r_traj"]["ci95"] == pytest.approx(12.706 * 2.0)
    assert s["pct_oracle"] == pytest.approx(50.0)
    assert s["episodes"] == 4 and s["failed_episodes"] == 1
    assert s["quit_reasons"]["similar"] == 4
    assert s["grounding_replacement_rate"] == pytest.approx(4 / 12)


def test_single_seed_ci_is_over_episodes():
    s = summarize_method([_ep(0, 1.0), _ep(0, 2.0), _ep(0, 3.0)])
    assert s["ci_over"] == "episodes"
    assert s["r_traj"]["ci95"] == pytest.approx(4.303 * 1 / math.sqrt(3))
    assert s["pct_oracle"] is None


def test_oracle_mean_averages_seed_means():
    assert oracle_mean([_ep(0, 10.0), _ep(0, 20.0), _ep(1, 30.0)]) == pytest.approx(22.5)


def test_cumulative_rewards_carry_finished_episodes_forward():
    a = {"status": "ok", "steps": [{"reward": 4.0}, {"reward": 0.0}]}
    b = {"status": "ok", "steps": [{"reward": 2.0}, {"reward": 2.0}, {"reward": 2.0}]}
    assert cumulative_rewards([a, b], 3) == pytest.approx([3.0, 4.0, 5.0])
