"""Turn episode state into the texts agents read and memories are keyed by.

One place decides what an agent sees, so the planner, actor, critic and reflector agree, and a
memory written by one episode is found again by the next.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from nodes import prompts
from nodes.resources import Resources

STATE_HISTORY = 10  # titles of history in a memory key (BILLP.md §3)


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
    """Return the memory key of the current state: recent history titles + this episode's items."""
    titles = res.catalogue.titles
    shown = [titles[i] for i in state.get("history", [])[-STATE_HISTORY:]]
    episode = [titles[i] for i in state.get("recommended", [])]
    return "history: " + " | ".join(shown) + "\nepisode: " + " | ".join(episode)


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
