"""Start an episode, and play the user: the torch simulator node that closes the loop."""

from __future__ import annotations

from typing import Any, Literal

from langgraph.runtime import Runtime

from nodes.context import Context
from nodes.draws import rng
from nodes.resources import aget_resources
from nodes.state import State
from nodes.views import history_text
from simulator.rules import judge

Reflections = Literal["similar", "random", "none"]


def make_start(reflections: Reflections, variant: str | None = None) -> Any:
    """Return the start node of a graph variant.

    `reflections`: `similar` retrieves the top-k reflections most similar to the user's history
    (BiLLP's macro level); `random` samples k at random, seeded per (run seed, user) (Reflexion
    as the reference ran it: no similarity retrieval); `none` shows none. `variant` names the
    graph, so its memories live in their own default folder (`nodes.resources.memory_path`).
    """

    async def start(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
        """Validate the user, show their latest history, and retrieve reflections."""
        ctx = runtime.context
        res = await aget_resources(ctx, variant)
        if "user_id" not in state:
            raise ValueError('the input needs a "user_id" (a dataset user id, e.g. {"user_id": 0})')
        user = int(state["user_id"])
        res.ratings_of(user)  # validates the id early, with a clear message
        update: dict[str, Any] = {
            "user_id": user,
            "variant": variant,
            "history": res.history_of(user, ctx.history_len),
            "recommended": [],
            "rewards": [],
            "reflections": [],
            "pending": {},
            "value": 0.0,
            "done": False,
            "quit_reason": None,
            "reflection": None,
        }
        macro = res.memories.macro
        if reflections == "similar":
            query = history_text(res, update)
            update["reflections"] = await macro.aretrieve(query, ctx.reflection_k)
        elif reflections == "random":
            update["reflections"] = macro.sample(ctx.reflection_k, rng(ctx.seed, user, 0, "macro"))
        return update

    return start


def make_user(closes_step: bool) -> Any:
    """Return the user node; when no critic follows, it also closes the step record."""

    async def user(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
        """Show the pending item to the simulated user: rating, reward, and whether they stay."""
        ctx = runtime.context
        res = await aget_resources(ctx, state.get("variant"))
        pending = dict(state["pending"])
        recommended = state.get("recommended", [])
        item = int(pending["item"])
        if item in res.bundle.excluded(int(state["user_id"])):  # grounding never picks one
            raise ValueError(
                f"item {item} is in user {state['user_id']}'s logged history and "
                "logged_items='exclude' forbids recommending it (a custom actor node chose it)"
            )
        ratings = res.ratings_of(state["user_id"])
        verdict = judge(
            rating=float(ratings[item]),
            item=item,
            recommended=recommended,
            vectors=res.item_vectors,
            tau=res.tau,
            window=res.window,
            max_steps=ctx.max_steps,
        )
        done = verdict.quit_reason is not None
        pending.update(
            step=len(recommended) + 1,
            rating=verdict.rating,
            reward=verdict.reward,
            accepted=verdict.accepted,
            quit_reason=verdict.quit_reason,
            min_distance=verdict.min_distance if verdict.min_distance != float("inf") else None,
        )
        update: dict[str, Any] = {
            "recommended": [*recommended, item],
            "rewards": [*state.get("rewards", []), verdict.reward],
            "done": done,
            "quit_reason": verdict.quit_reason,
        }
        if closes_step:
            pending.setdefault("value", None)
            pending.setdefault("advantage", None)
            pending.setdefault("critic_hint", None)
            pending.setdefault("critic_distance", None)
            update.update(steps=[pending], pending={})
        else:
            update["pending"] = pending
        return update

    return user
