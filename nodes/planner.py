"""Planner (macro level): a short plan for the next step, informed by retrieved reflections."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from nodes import prompts
from nodes.context import Context
from nodes.draws import draw_seed
from nodes.llm.calls import call_structured
from nodes.resources import aget_resources
from nodes.state import State
from nodes.views import episode_text, history_text, messages, with_usage

FALLBACK_THOUGHT = "Recommend a well-liked item from a genre not shown in the last four steps."


async def planner(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Write the plan for the next recommendation; fall back to a generic plan on bad output."""
    ctx = runtime.context
    res = await aget_resources(ctx, state.get("variant"))
    user = prompts.PLANNER_USER.format(
        history=history_text(res, state),
        episode=episode_text(res, state),
        reflections=prompts.list_block(state.get("reflections", []), "(none yet)"),
    )
    seed = draw_seed(ctx.seed, int(state["user_id"]), len(state.get("recommended", [])), "planner")
    chat = messages(prompts.PLANNER_SYSTEM, user)
    result = await call_structured(res.llm, chat, prompts.Plan, seed=seed)
    thought = result.value.thought.strip() if result.ok and result.value else ""
    fallback = not thought
    return {
        "thought": thought or FALLBACK_THOUGHT,
        "pending": with_usage({}, "planner", result.usage, fallback),
        "usage": {"planner": result.usage.to_dict()},
        "fallbacks": {"planner": int(fallback)},
    }
