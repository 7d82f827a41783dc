"""Turn episode state into the texts agents read and memories are keyed by.

One place decides what an agent sees, so the planner, actor, critic and reflector agree, and a
memory written by one episode is found again by the next.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from memory.rules import HintRule
from nodes import prompts
from nodes.resources import Resources

STATE_WINDOW = 10  # items in a memory key: (history + episode)[-10:] (BILLP.md §3)
KEY_TITLE_CHARS = 60  # per title: 10 titles stay inside MiniLM's 256 tokens (tests check it)


TEXT_CACHE_SIZE = 4096  # rendered histories kept per Resources (one per user seen)


def history_text(res: Resources, state: Mapping[str, Any]) -> str:
    """Render the user's shown history with genres (once per history; every agent shows it)."""
    key = ("history", *state.get("history", ()))
    text = res.texts.get(key)
    if text is None:
        if len(res.texts) >= TEXT_CACHE_SIZE:
            res.texts.clear()
        text = prompts.history_block([res.catalogue.describe(i) for i in key[1:]])
        res.texts[key] = text
    return text


def episode_text(res: Resources, state: Mapping[str, Any]) -> str:
    """Render this episode's recommendations with their ratings."""
    steps = state.get("steps", [])
    rows = [(s["title"], s["rating"], s["accepted"]) for s in steps]
    return prompts.episode_block(rows)


def state_key(res: Resources, state: Mapping[str, Any]) -> str:
    """Return the memory key of the current state: one sliding window over history + episode.

    The reference keys a state by the last 10 titles of `history + episode`; after 10 steps the
    key holds only this episode's items, so a state one user reached can be found again from
    another user's episode. Newest first and each title cut to `KEY_TITLE_CHARS`, so an embedder
    that truncates long inputs drops the oldest items, never the newest.
    """
    items = [*state.get("history", ()), *state.get("recommended", ())][-STATE_WINDOW:]
    titles = res.catalogue.titles
    return "recent items, newest first: " + " | ".join(
        titles[i][:KEY_TITLE_CHARS] for i in reversed(items)
    )


def should_learn(ctx: Any) -> bool:
    """Return whether a graph run writes memories: `learn`, or by default only in the train env.

    Playing the test env from Studio or Python must not change what training learnt unless asked.
    """
    return ctx.split == "train" if ctx.learn is None else bool(ctx.learn)


def actor_rule(ctx: Any) -> HintRule:
    """Return the actor-memory hint rule of a context (derived, or the reference's)."""
    if ctx.hint_rule == "reference":
        return HintRule.reference(ctx.actor_near, tuple(ctx.actor_band))
    return HintRule.derived(ctx.actor_quantile, near=ctx.actor_near)


def critic_rule(ctx: Any) -> HintRule:
    """Return the critic-memory hint rule of a context."""
    if ctx.hint_rule == "reference":
        return HintRule.reference(ctx.critic_near)
    return HintRule.derived(ctx.critic_quantile, near=ctx.critic_near)


def messages(system: str, user: str) -> list[BaseMessage]:
    """Return a system + user message pair."""
    return [SystemMessage(content=system), HumanMessage(content=user)]


def with_usage(pending: Mapping[str, Any], role: str, usage: Any, fallback: bool) -> dict:
    """Return `pending` with this role's usage recorded and its fallback counted."""
    out = dict(pending)
    out["usage"] = {**pending.get("usage", {}), role: usage.to_dict()}
    out["fallbacks"] = [*pending.get("fallbacks", []), *([role] if fallback else [])]
    return out


def add_counts(left: Mapping[str, Any] | None, right: Mapping[str, Any] | None) -> dict:
    """Sum two nested {name: number | {name: number}} dicts (the reducer of usage totals)."""
    out: dict[str, Any] = dict(left or {})
    for key, value in (right or {}).items():
        if isinstance(value, Mapping):
            out[key] = add_counts(out.get(key), value)
        else:
            out[key] = out.get(key, 0) + value
    return out
