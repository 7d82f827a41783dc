"""Actor (micro level): turn the plan into one concrete item, with the actor-memory hint.

`free` mode: the actor writes a title, grounded to a catalogue item not yet recommended.
`shortlist` mode: it picks one of K numbered candidates (a schema enum, so it cannot pick
anything else). On unusable output both fall back to the top candidate, and count it.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from memory.stores import ActorHint
from nodes import prompts
from nodes.context import Context
from nodes.draws import draw_seed, rng
from nodes.llm.calls import call_structured
from nodes.resources import Resources, aget_resources
from nodes.state import State
from nodes.views import actor_rule, episode_text, history_text, messages, state_key, with_usage


def hint_text(res: Resources, hint: ActorHint | None) -> str:
    """Render the actor-memory hint as quoted titles marked + or -."""
    if hint is None:
        return "(no similar state remembered)"
    lines = []
    for label, sign in sorted(hint.labels.items(), key=lambda kv: -kv[1]):
        if label.isdigit() and int(label) < len(res.catalogue.titles):
            title = prompts.quote(res.catalogue.titles[int(label)])
            lines.append(f"{'+' if sign > 0 else '-'} {title}")
    return "\n".join(lines) or "(no similar state remembered)"


def candidates_text(res: Resources, candidates: list[int]) -> str:
    """Render numbered shortlist candidates with their genres."""
    lines = [
        f"{n}. {prompts.item_line(*res.catalogue.describe(item))}"
        for n, item in enumerate(candidates, start=1)
    ]
    return prompts.CANDIDATES.format(lines="\n".join(lines))


def exploration_genres(res: Resources, state: dict[str, Any], seed: int) -> list[str]:
    """Return the reference's exploration hint: 2 genres not among the last `window` items' genres.

    Drawn per (seed, user, step), so the same step of the same user always gets the same genres.
    """
    recent = state.get("recommended", [])[-res.window :]
    used = {g for item in recent for g in res.catalogue.genres[item]}
    pool = [g for g in res.catalogue.all_genres if g not in used]
    if not pool:
        return []
    step = len(state.get("recommended", []))
    draw = rng(seed, int(state["user_id"]), step, "explore")
    picks = draw.choice(len(pool), size=min(2, len(pool)), replace=False)
    return [pool[i] for i in sorted(int(p) for p in picks)]


def _unshown(hint: ActorHint | None, recommended: list[int]) -> ActorHint | None:
    """Drop labels of items this episode already recommended: they cannot be recommended again
    (grounding excludes them; a repeat quits), so they would only crowd the prompt. None if
    nothing is left: the prompt then carries no hint."""
    if hint is None:
        return None
    shown = {str(i) for i in recommended}
    labels = {k: v for k, v in hint.labels.items() if k not in shown}
    return ActorHint(labels=labels, sq_l2=hint.sq_l2, state=hint.state) if labels else None


def make_actor(use_memory: bool) -> Any:
    """Return the actor node; `use_memory` adds the actor-memory hint (BiLLP's micro level)."""

    async def actor(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
        """Choose the next item and ground it; return it as the pending step's action."""
        return await act(state, runtime.context, use_memory)

    return actor


async def act(state: State, ctx: Context, use_memory: bool) -> dict[str, Any]:
    """Choose and ground the next item (the actor node's body)."""
    res = await aget_resources(ctx, state.get("variant"))
    recommended = state.get("recommended", [])
    user_id, step = int(state["user_id"]), len(recommended)
    # The nearest remembered state, however far: its distance is recorded (the audit and the
    # derived hint rule need it); it becomes a hint only when the rule accepts it.
    nearest = await res.memories.actor.anearest(state_key(res, state)) if use_memory else None
    rule = actor_rule(ctx)
    fired = nearest is not None and res.memories.actor.fires(nearest.sq_l2, rule)
    hint = _unshown(nearest, recommended) if fired else None
    explore = exploration_genres(res, state, ctx.seed) if ctx.explore else []
    shortlist = ctx.grounding == "shortlist"
    k = ctx.shortlist_k if shortlist else 1
    candidates = res.candidates.shortlist(user_id, state.get("history", []), recommended, k)
    user = prompts.ACTOR_USER.format(
        history=history_text(res, state),
        episode=episode_text(res, state),
        thought=prompts.quote(state.get("thought") or "(no plan: choose freely)"),
        hint=hint_text(res, hint),
        explore=prompts.explore_line(explore),
        candidates=candidates_text(res, candidates) if shortlist else "",
    )
    system = prompts.ACTOR_SHORTLIST_SYSTEM if shortlist else prompts.ACTOR_SYSTEM
    schema = prompts.shortlist_schema(len(candidates)) if shortlist else prompts.TitleChoice
    seed = draw_seed(ctx.seed, user_id, step, "actor")
    result = await call_structured(res.llm, messages(system, user), schema, seed=seed)
    action, grounded = "", None
    if result.ok and result.value is not None:
        if shortlist:
            choice = int(result.value.choice)
            action = str(choice)
            item = candidates[choice - 1]
            title = res.catalogue.titles[item]
            grounded = {"item": item, "title": title, "match": "shortlist", "replaced": False}
        elif action := result.value.title.strip():
            grounded = await _ground(res, action, recommended, int(state["user_id"]))
    fallback = grounded is None
    if fallback:
        item = candidates[0]
        grounded = {
            "item": item,
            "title": res.catalogue.titles[item],
            "match": "fallback",
            "replaced": True,
        }
    pending = with_usage(state.get("pending", {}), "actor", result.usage, fallback)
    pending.update(
        thought=state.get("thought", ""),
        action=action,
        actor_hint=dict(hint.labels) if hint else None,
        hint_distance=round(nearest.sq_l2, 6) if nearest else None,
        hint_radius=res.memories.actor.radius(rule) if use_memory else None,
        explore=explore,
        candidates=list(candidates) if shortlist else None,
        **grounded,
    )
    return {
        "pending": pending,
        "usage": {"actor": result.usage.to_dict()},
        "fallbacks": {"actor": int(fallback)},
    }


async def _ground(res: Resources, answer: str, recommended: list[int], user: int) -> dict[str, Any]:
    # Never an item of this episode, nor one the user logged when the env excludes them.
    exclude = res.bundle.excluded(user) | set(recommended)
    match = res.catalogue.index.match(answer, exclude)
    if match is None:
        vector = (await res.catalogue.embeddings.aembed([answer]))[0]
        match = res.catalogue.index.nearest(vector, exclude)
    return {
        "item": match.item,
        "title": match.title,
        "match": match.match,
        "replaced": match.replaced,
    }
