"""Write what a step or an episode taught into the memories (BILLP.md section 3).

One place for the writes, shared by the critic and reflector nodes (learning as the episode runs)
and by `eval.protocol.learn_from` (learning after a batch), so the two can never drift apart.

The critic's value and its targets live on one scale, [-5, 5]: the learning reward of a step is
its rating minus `REWARD_CENTER` (3, the middle of 1-5), so `r + gamma * V(s')` stays inside
[-4.5, 4.5] and the advantage `A = r + gamma * V(s') - V(s)` is positive exactly when the step
did better than the critic expected. The step on which the user leaves teaches "bad": its
learning reward is `QUIT_REWARD` (-10, below anything V can offset), so its advantage is always
negative and the item is stored as "-" (the reference uses -1000 to the same end). Both are
learning signals only: Len, R_traj and the rewards in step records are untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from nodes.resources import Resources
from nodes.views import history_text, state_key

REWARD_CENTER = 3.0
QUIT_REWARD = -10.0
VALUE_RANGE = (-5.0, 5.0)
QUITS = frozenset({"low_rating", "similar", "repeat"})


class Lesson(NamedTuple):
    """What one step teaches: the critic's target for s, and the advantage of the action taken."""

    target: float
    advantage: float


def td_lesson(
    rating: float, quit_reason: str | None, value_next: float, value_now: float, gamma: float
) -> Lesson:
    """Return the TD(0) lesson of one step on the critic's scale (see the module docstring)."""
    reward = QUIT_REWARD if quit_reason in QUITS else float(rating) - REWARD_CENTER
    raw = reward + gamma * float(value_next)
    low, high = VALUE_RANGE
    return Lesson(target=min(high, max(low, raw)), advantage=raw - float(value_now))


async def learn_step(
    res: Resources, critic: str, key: str, item: int | str, advantage: float, target: float
) -> None:
    """Record one step: actor memory (state, item) -> sign of A; critic memory -> the target.

    With the `learned` critic, the value net takes the same TD(0) target.
    """
    await res.memories.actor.arecord(key, str(item), advantage)
    await res.memories.critic.arecord(key, target)
    if critic == "learned":
        vector = (await res.catalogue.embeddings.aembed([key]))[0]
        res.memories.learned_critic.update(vector, target)


async def observe_keys(
    res: Resources, keys: Sequence[str], actor_seen: Sequence[float] | None = None
) -> None:
    """Feed the derived hint rules: how far these states lie from what is stored, before they
    are stored themselves (`memory.rules`). In batch learning the memory then holds earlier
    episodes only, so the sample is what a new user's state finds.

    `actor_seen`: the actor memory's distances the actor's own queries for these keys already
    found (online learning), recorded as they are instead of searching again."""
    actor, critic = res.memories.actor, res.memories.critic
    actor.observe(actor_seen if actor_seen is not None else await actor.anearest_distances(keys))
    critic.observe(await critic.anearest_distances(keys))


async def learn_reflection(res: Resources, history: Sequence[int], text: str, user: int) -> None:
    """Store a reflection in macro memory, keyed by the user's history text."""
    context = history_text(res, {"history": list(history)})
    await res.memories.macro.aadd(text, context, {"user": int(user)})


async def learn_episode(res: Resources, critic: str, gamma: float, record: dict[str, Any]) -> None:
    """Replay a finished episode's record: every step with an advantage, then its reflection."""
    history = record["history"]
    steps = record["steps"]
    items = [int(s["item"]) for s in steps]
    keys = [
        state_key(res, {"history": history, "recommended": items[:i]}) for i in range(len(steps))
    ]
    learnt = [i for i, step in enumerate(steps) if step.get("advantage") is not None]
    await observe_keys(res, [keys[i] for i in learnt])
    for i in learnt:
        step, key = steps[i], keys[i]
        target = step.get("target")
        if target is None:  # a record written before targets were recorded
            target = td_lesson(
                step["rating"], step.get("quit_reason"), step["value"], 0.0, gamma
            ).target
        await learn_step(res, critic, key, step["item"], float(step["advantage"]), float(target))
    if record.get("reflection"):
        await learn_reflection(res, history, record["reflection"], record["user"])
