"""Write what a step or an episode taught into the memories (BILLP.md section 3).

One place for the writes, shared by the critic and reflector nodes (learning as the episode runs)
and by `eval.protocol.learn_from` (learning after a batch), so the two can never drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nodes.resources import Resources
from nodes.views import history_text, state_key


async def learn_step(
    res: Resources, critic: str, key: str, item: int | str, advantage: float, target: float
) -> None:
    """Record one step: actor memory (state, item) -> sign of A; critic memory -> r + gamma V(s').

    With the `learned` critic, the value net takes the same TD(0) target.
    """
    await res.memories.actor.arecord(key, str(item), advantage)
    await res.memories.critic.arecord(key, target)
    if critic == "learned":
        vector = (await res.catalogue.embeddings.aembed([key]))[0]
        res.memories.learned_critic.update(vector, target)


async def learn_reflection(res: Resources, history: Sequence[int], text: str, user: int) -> None:
    """Store a reflection in macro memory, keyed by the user's history text."""
    context = history_text(res, {"history": list(history)})
    await res.memories.macro.aadd(text, context, {"user": int(user)})


async def learn_episode(res: Resources, critic: str, gamma: float, record: dict[str, Any]) -> None:
    """Replay a finished episode's record: every step with an advantage, then its reflection."""
    history = record["history"]
    steps = record["steps"]
    items = [int(s["item"]) for s in steps]
    for i, step in enumerate(steps):
        if step.get("advantage") is None:
            continue
        key = state_key(res, {"history": history, "recommended": items[:i]})
        target = float(step["reward"]) + gamma * float(step["value"])
        await learn_step(res, critic, key, step["item"], float(step["advantage"]), target)
    if record.get("reflection"):
        await learn_reflection(res, history, record["reflection"], record["user"])
