"""Reflector: after an episode, a lesson on why the user left, stored in macro memory."""

from __future__ import annotations

import asyncio
from typing import Any

from langgraph.runtime import Runtime

from nodes import prompts
from nodes.context import Context
from nodes.draws import draw_seed
from nodes.lessons import learn_reflection
from nodes.llm.calls import call_structured
from nodes.resources import aget_resources
from nodes.state import State
from nodes.views import episode_text, history_text, messages, should_learn


def fallback_reflection(reason: str | None, length: int) -> str:
    """Return the documented reflection used when the model's answer is unusable."""
    why = prompts.QUIT_EXPLAINED.get(reason or "", "the session ended")
    return (
        f"The session lasted {length} items and ended because {why}. Next time, change genre "
        "more often and never recommend anything close to the last four items."
    )


async def reflector(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Write a reflection on the finished episode; store it and persist memories when learning."""
    ctx = runtime.context
    res = await aget_resources(ctx, state.get("variant"))
    steps = state.get("steps", [])
    reason = state.get("quit_reason")
    user = prompts.REFLECTOR_USER.format(
        history=history_text(res, state),
        episode=episode_text(res, state),
        reason=prompts.QUIT_EXPLAINED.get(reason or "", str(reason)),
        total=sum(s["reward"] for s in steps),
        length=sum(1 for s in steps if s["accepted"]),
    )
    seed = draw_seed(ctx.seed, int(state["user_id"]), len(steps), "reflector")
    chat = messages(prompts.REFLECTOR_SYSTEM, user)
    result = await call_structured(res.llm, chat, prompts.Reflection, seed=seed)
    text = result.value.reflection.strip() if result.ok and result.value else ""
    fallback = not text
    if fallback:
        text = fallback_reflection(reason, sum(1 for s in steps if s["accepted"]))
    if should_learn(ctx):
        await learn_reflection(res, state.get("history", []), text, state["user_id"])
        # fsyncs of every memory file: off the event loop, so concurrent episodes keep stepping
        await asyncio.to_thread(res.memories.save)
    return {
        "reflection": text,
        "usage": {"reflector": result.usage.to_dict()},
        "fallbacks": {"reflector": int(fallback)},
    }
