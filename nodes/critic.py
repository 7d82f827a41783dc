"""Critic: value the new state, compute the advantage, and write the micro memories.

A = r + gamma * V(s') - V(s), with V(s0) = 0 and V = 0 once the episode has ended, on the scale
`nodes.lessons` documents (learning reward = rating - 3; the quitting step always negative). The
actor memory learns the sign of A for (state, item); the critic memory learns r + gamma * V(s').
`critic="llm"` asks the model (with the critic-memory hint); `critic="learned"` asks a small
value network trained by TD(0) on the same targets (no LLM call).
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from nodes import prompts
from nodes.context import Context
from nodes.draws import draw_seed
from nodes.lessons import learn_step, observe_keys, td_lesson
from nodes.llm.calls import Usage, call_structured
from nodes.resources import Resources, aget_resources
from nodes.state import State
from nodes.views import (
    critic_rule,
    episode_text,
    history_text,
    messages,
    should_learn,
    state_key,
    with_usage,
)


async def _llm_value(
    res: Resources, state: dict[str, Any], hint: float | None, seed: int
) -> tuple[float, Usage, bool]:
    user = prompts.CRITIC_USER.format(
        history=history_text(res, state),
        episode=episode_text(res, state),
        hint=f"{hint:g}" if hint is not None else "(none remembered)",
    )
    chat = messages(prompts.CRITIC_SYSTEM, user)
    result = await call_structured(res.llm, chat, prompts.Value, seed=seed)
    if result.ok and result.value is not None:
        return float(result.value.value), result.usage, False
    return 0.0, result.usage, True  # documented fallback: a neutral value


async def critic(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """Value s', compute A for the step just taken, learn from it, and close the step record."""
    ctx = runtime.context
    res = await aget_resources(ctx, state.get("variant"))
    pending = dict(state["pending"])
    steps = [*state.get("steps", []), pending]  # s' includes the step just taken
    before = {**state, "recommended": state["recommended"][:-1]}
    after = {**state, "steps": steps}
    key_before, key_after = state_key(res, before), state_key(res, after)
    usage, fallback, hint_value, distance = Usage(), False, None, None
    if state.get("done"):
        value_next = 0.0
    elif ctx.critic == "learned":
        vector = (await res.catalogue.embeddings.aembed([key_after]))[0]
        value_next = res.memories.learned_critic.value(vector)
    else:
        nearest = await res.memories.critic.anearest(key_after)
        if nearest is not None:
            distance = round(nearest.sq_l2, 6)
            if res.memories.critic.fires(nearest.sq_l2, critic_rule(ctx)):
                hint_value = nearest.value
        seed = draw_seed(ctx.seed, int(state["user_id"]), len(before["recommended"]), "critic")
        value_next, usage, fallback = await _llm_value(res, after, hint_value, seed)
    value_now = float(state.get("value", 0.0))
    lesson = td_lesson(
        pending["rating"], pending.get("quit_reason"), value_next, value_now, ctx.gamma
    )
    pending = with_usage(pending, "critic", usage, fallback)
    pending.update(
        value=value_next,
        value_before=value_now,
        target=lesson.target,
        advantage=lesson.advantage,
        critic_hint=hint_value,
        critic_distance=distance,
    )
    if should_learn(ctx):
        seen = pending.get("hint_distance")  # the actor's query for this very state
        await observe_keys(res, [key_before], [seen] if seen is not None else None)
        await learn_step(
            res, ctx.critic, key_before, pending["item"], lesson.advantage, lesson.target
        )
    return {
        "steps": [pending],
        "pending": {},
        "value": value_next,
        "usage": {"critic": usage.to_dict()},
        "fallbacks": {"critic": int(fallback)},
    }
