"""Audit BiLLP's learning: did each memory speak, was it right, and did it change what was done?

"The code path exists" is not evidence that a learning level acts. Per learning method this
measures, on the test episodes of a run:
- how often each hint fired (`actor_hint_rate`, `critic_hint_rate`: shares of test steps whose
  prompt carried it) and how many reflections an episode was shown;
- whether the actor hint was right (`hint_precision`): for each item a fired hint labelled + or -,
  would the **test env's ground truth** have accepted it at that step (its rating and the quit
  rule in the episode's state then)? Checked when the episode is recorded (`check_hints`), since
  it needs the simulator; the summary only counts;
- what training did (`train_curve`: mean R_traj of each training batch, in order);
- whether the method behaved differently (`differs_from`: share of shared (user, seed) test
  episodes whose item lists differ from another LLM method's). Identical rows are a bug report.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from simulator.rules import judge


def check_hints(res: Any, record: dict[str, Any], max_steps: int) -> None:
    """Mark, in each step with a fired actor hint, which hinted items the env would accept.

    `res` is the test split's resources (`nodes.resources.Resources`); adds
    `hint_check: {item id: accepted}` to those steps, in place.
    """
    if record.get("status") != "ok":
        return
    ratings = res.ratings_of(int(record["user"]))
    items = [int(s["item"]) for s in record["steps"]]
    refused = _refused(res, int(record["user"]))
    for i, step in enumerate(record["steps"]):
        hint = step.get("actor_hint")
        if not hint:
            continue
        checks = {}
        for label in hint:
            if not label.isdigit() or int(label) >= len(ratings):
                continue
            item = int(label)
            verdict = judge(
                rating=float(ratings[item]),
                item=item,
                recommended=items[:i],
                vectors=res.item_vectors,
                tau=res.tau,
                window=res.window,
                max_steps=max_steps,
            )
            checks[label] = bool(verdict.accepted) and item not in refused
        step["hint_check"] = checks


def _refused(res: Any, user: int) -> set[int]:
    """Return the items the env refuses to recommend to `user` (logged ones, when excluded)."""
    return set(res.bundle.excluded(user))


def _share(hits: int, total: int) -> float | None:
    return hits / total if total else None


def hint_rates(episodes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Return fire rates, reflections per episode and hint precision over test episodes."""
    steps = [s for e in episodes for s in e.get("steps", [])]
    actor = sum(1 for s in steps if s.get("actor_hint"))
    critic = sum(1 for s in steps if s.get("critic_hint") is not None)
    counts = {1: [0, 0], -1: [0, 0]}  # sign -> [accepted, checked]
    for s in steps:
        for label, ok in (s.get("hint_check") or {}).items():
            sign = 1 if int(s["actor_hint"].get(label, 0)) > 0 else -1
            counts[sign][0] += int(ok)
            counts[sign][1] += 1
    distances = [s["hint_distance"] for s in steps if s.get("hint_distance") is not None]
    return {
        "steps": len(steps),
        "actor_hint_rate": _share(actor, len(steps)),
        "critic_hint_rate": _share(critic, len(steps)),
        "reflections_per_episode": (
            sum(len(e.get("reflections") or []) for e in episodes) / len(episodes)
            if episodes
            else None
        ),
        "hint_precision": {
            "plus": _share(*counts[1]),
            "minus": _share(*counts[-1]),
            "n_plus": counts[1][1],
            "n_minus": counts[-1][1],
        },
        "median_hint_distance": _median(distances),
        # Frozen test: one radius for the whole phase; the median is order-independent anyway.
        "actor_radius": _median(
            [s["hint_radius"] for s in steps if s.get("hint_radius") is not None]
        ),
    }


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def train_curve(records: Sequence[Mapping[str, Any]]) -> list[float]:
    """Return the mean R_traj of each training batch, in order (all seeds of a batch together)."""
    by_batch: dict[int, list[float]] = defaultdict(list)
    for r in records:
        if r.get("phase") == "train" and r.get("status") == "ok":
            by_batch[int(r.get("batch", 0))].append(float(r["r_traj"]))
    return [math.fsum(v) / len(v) for _, v in sorted(by_batch.items())]


def differs_from(
    mine: Sequence[Mapping[str, Any]], others: Mapping[str, Sequence[Mapping[str, Any]]]
) -> dict[str, float | None]:
    """Return, per other method, the share of shared (user, seed) episodes with other items."""
    items = {(e["user"], e["seed"]): [s["item"] for s in e.get("steps", [])] for e in mine}
    out: dict[str, float | None] = {}
    for name, episodes in others.items():
        theirs = {(e["user"], e["seed"]): [s["item"] for s in e.get("steps", [])] for e in episodes}
        shared = sorted(set(items) & set(theirs))
        out[name] = _share(sum(items[k] != theirs[k] for k in shared), len(shared))
    return out


def learning_block(
    method: str,
    records: Sequence[Mapping[str, Any]],
    llm_methods: Sequence[str],
    config: Mapping[str, Any],
) -> dict[str, Any]:
    """Return `methods.{method}.learning` of results.json from a run's episode records."""
    ok = [r for r in records if r.get("status") == "ok"]
    test = [r for r in ok if r["method"] == method and r["phase"] == "test"]
    others = {
        m: [r for r in ok if r["method"] == m and r["phase"] == "test"]
        for m in llm_methods
        if m != method
    }
    rule = config.get("hint_rule", "derived")
    return {
        **hint_rates(test),
        "rule": {
            "kind": rule,
            "actor_quantile": config.get("actor_quantile") if rule == "derived" else None,
            "critic_quantile": config.get("critic_quantile") if rule == "derived" else None,
        },
        "train_curve": train_curve([r for r in ok if r["method"] == method]),
        "differs_from": differs_from(test, others),
    }
