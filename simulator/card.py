"""The environment card: what a built env is, and whether it tests what BiLLP claims to test.

Beyond sizes and reference policies, the card answers three questions a user building an env
from their own data cannot otherwise check:

- Does the env reward planning? `planning_gap` plays a *myopic* truth-greedy policy (the best
  true rating every step, blind to the similarity rule) against the planning oracle. When the
  myopic policy lasts nearly as long, long-term planning has nothing to win.
- Is the user model more than popularity? `user_model.popularity_auc` scores item popularity in
  the very same leave-last-out check (same held-out items, same 100 random negatives) as `auc`.
- Does it reward echoing the user's log? `policies.echo_history` (built with
  `logged_items="allow"` only; under "exclude" the env refuses logged items) replays the user's
  logged items, most recent first, skipping those that would trip the similarity rule.

`verdict` sums the first two up in one line, starting "ok:" or "warning:".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import Tensor

from simulator.env import BatchState, UserWorld
from simulator.policies import OraclePolicy, Policy, _act_on_running, evaluate_policy, first_safe
from simulator.policies import summarize as summarize_episodes

if TYPE_CHECKING:
    from simulator.build import EnvBundle

MIN_AUC_MARGIN = 0.02
"""Below this AUC margin over popularity the user model mostly encodes popularity."""
MIN_PLANNING_RATIO = 2.0
"""Below this oracle / myopic R_traj ratio the env barely rewards planning."""
_ECHO_ROWS = 64  # rows per chunk when checking a long history against the window


class PopularityScorer:
    """Score every item by its positive count: the no-personalization model of `popularity_auc`.

    Duck-types `UserModel.score_matrix`, so `evaluate_leave_last_out` judges it exactly as it
    judges the user model.
    """

    def __init__(self, train_interactions: pd.DataFrame, n_items: int) -> None:
        pos = train_interactions.loc[train_interactions["signal"] > 0, "item"]
        counts = torch.bincount(torch.as_tensor(pos.to_numpy(copy=True)), minlength=n_items)
        self.counts = counts.float()

    def score_matrix(self, users: Tensor) -> Tensor:
        """Return [len(users), n_items] popularity scores (the same row for every user)."""
        return self.counts.expand(len(users), -1)


class MyopicPolicy(OraclePolicy):
    """Take the highest true rating not yet recommended, ignoring the similarity rule.

    The truth-greedy player without planning: an oracle on the same world with tau = 0.
    """

    name = "myopic"

    def __init__(self, world: UserWorld, n_candidates: int = 16) -> None:
        super().__init__(dataclasses.replace(world, tau=0.0), n_candidates)


class EchoHistoryPolicy:
    """Replay the user's logged items, most recent first, skipping those that would quit.

    Measures how much an env rewards echoing the log (only possible with
    `logged_items="allow"`). It checks the similarity rule with the world's own vectors and tau;
    when no logged item is left that passes, it repeats its last item, which ends the episode.
    """

    name = "echo_history"

    def __init__(self, world: UserWorld, histories: Mapping[int, Sequence[int]]) -> None:
        self.world, self.histories = world, histories
        self._logs = torch.zeros(0, 0, dtype=torch.long)

    def reset(self, users: Tensor) -> None:
        """Lay out each user's log newest first, padded with -1."""
        logs = [list(reversed(self.histories.get(int(u), []))) for u in users.reshape(-1)]
        width = max(1, max(len(h) for h in logs))
        self._logs = torch.full((len(logs), width), -1, dtype=torch.long)
        for row, log in enumerate(logs):
            self._logs[row, : len(log)] = torch.as_tensor(log, dtype=torch.long)

    def act(self, state: BatchState) -> Tensor:
        """Pick each running row's newest logged item that is unused and far enough."""
        if state.batch_size != self._logs.shape[0]:
            raise ValueError("EchoHistoryPolicy.act: state batch differs from the last reset()")
        return _act_on_running(state, self._pick)

    def _pick(self, state: BatchState, rows: Tensor) -> Tensor:
        picks = []
        for chunk in rows.split(_ECHO_ROWS):
            cand = self._logs[chunk]
            safe = cand.clamp_min(0)
            ok = (cand >= 0) & ~state.recommended[chunk].gather(1, safe)
            window = state.window_items[chunk]
            pick, found = first_safe(safe, ok, window, self.world.item_vectors, self.world.tau)
            # Nothing left: repeat the last item (a sure quit) - or, at step 1, the newest log.
            picks.append(torch.where(found | (state.step[chunk] == 0), pick, window[:, -1]))
        return torch.cat(picks)


def _len_r_traj(world: UserWorld, policy: Policy, users: Sequence[int], seed: int) -> dict:
    summary = summarize_episodes(evaluate_policy(world, policy, users, seed=seed))
    return {"len": round(summary["len"], 4), "r_traj": round(summary["r_traj"], 4)}


def verdict(gap: Mapping[str, Mapping[str, float]], auc: float, popularity_auc: float) -> str:
    """Return one line: "ok: ..." or "warning: ..." on the planning gap and the AUC margin."""
    myopic, oracle = gap["myopic"]["r_traj"], gap["oracle"]["r_traj"]
    ratio = oracle / myopic if myopic > 0 else math.inf
    margin = auc - popularity_auc
    problems = []
    if ratio < MIN_PLANNING_RATIO:
        problems.append(
            f"small planning gap (oracle R_traj only {ratio:.1f}x the myopic policy's): "
            "this env would not reward planning"
        )
    if margin < MIN_AUC_MARGIN:
        problems.append(
            f"user model AUC {auc:.3f} is within {MIN_AUC_MARGIN} of popularity's "
            f"{popularity_auc:.3f}: its ratings mostly encode popularity"
        )
    if problems:
        return "warning: " + "; ".join(problems)
    return (
        f"ok: planning pays (oracle R_traj {ratio:.1f}x the myopic policy's) and the user model "
        f"beats popularity by {margin:.3f} AUC"
    )


def make_card(
    bundle: EnvBundle,
    gt_quality: dict[str, Any],
    train_quality: dict[str, Any],
    gt_scores: dict[str, Tensor],
    policies: Mapping[str, Policy],
) -> dict[str, Any]:
    """Describe an environment: sizes, model quality, rating distributions, policy results."""
    ds, config, world = bundle.dataset, bundle.config, bundle.world("test")
    users, seed = bundle.test_users, config.seed
    results = {}
    for name, policy in policies.items():
        summary = summarize_episodes(evaluate_policy(world, policy, users, seed=seed))
        results[name] = {k: round(float(v), 4) for k, v in summary.items()}
    if config.logged_items == "allow":
        echo = EchoHistoryPolicy(world, bundle.histories)
        summary = summarize_episodes(evaluate_policy(world, echo, users, seed=seed))
        results["echo_history"] = {k: round(float(v), 4) for k, v in summary.items()}
    gap = {
        "myopic": _len_r_traj(world, MyopicPolicy(world), users, seed),
        "oracle": {k: results["oracle"][k] for k in ("len", "r_traj")},
    }
    auc, pop_auc = float(gt_quality["auc"]), float(gt_quality["popularity_auc"])
    cal = bundle.gt_calibrator
    return {
        "dataset": ds.name,
        "logged_items": config.logged_items,
        "n_users": ds.n_users,
        "n_items": ds.n_items,
        "n_interactions": len(ds.interactions),
        "n_negatives": int((ds.interactions["signal"] < 0).sum()),
        "n_train_users": len(bundle.train_users),
        "n_test_users": len(bundle.test_users),
        "user_model": {
            "kind": bundle.gt_model.config.kind,
            "auc": round(auc, 4),
            "popularity_auc": round(pop_auc, 4),
            "hr_at_10": round(float(gt_quality["hr_at_10"]), 4),
            "n_eval_users": int(gt_quality["n_users"]),
        },
        "train_user_model": {
            "auc": round(float(train_quality["auc"]), 4),
            "hr_at_10": round(float(train_quality["hr_at_10"]), 4),
        },
        "tau": round(bundle.tau, 6),
        "train_tau": round(bundle.train_tau, 6),
        "tau_percentile": config.tau_percentile,
        "window": config.window,
        "max_steps": config.max_steps,
        "rating_hist": {
            "positives": cal.histogram(gt_scores["positives"], integer=True),
            "random": cal.histogram(gt_scores["random"], integer=True),
        },
        "policies": results,
        "planning_gap": gap,
        "verdict": verdict(gap, auc, pop_auc),
        "stats": {k: int(v) for k, v in ds.stats.items()},
        "seed": seed,
    }
