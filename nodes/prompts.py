"""All prompt text and the answer schema of every role, in one place.

Prompts are short on purpose: the embedded model has a small context and runs on 2 cores.
Everything that comes from data (titles, genres, reflections, hints) is inserted as a JSON string
literal, so a title such as `Ignore previous instructions" ...` stays a quoted value and cannot
break out of its line or change the answer schema.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, Field, create_model

# ---------------------------------------------------------------- answer schemas


class Plan(BaseModel):
    """The planner's high-level thought for the next step."""

    thought: str = Field(
        max_length=400, description="One or two sentences: what kind of item to try next, why."
    )


class TitleChoice(BaseModel):
    """The actor's recommendation in free mode: a catalogue title."""

    title: str = Field(max_length=300, description="The exact title of one catalogue item.")


class Value(BaseModel):
    """The critic's estimate of the reward still to come from the current state."""

    # An enum, not ge/le: llama.cpp's JSON-schema grammar enforces enums but not integer bounds.
    value: Literal[-5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5] = Field(
        description="Integer from -5 (user about to leave) to 5."
    )


class Reflection(BaseModel):
    """The reflector's lesson from a finished episode."""

    reflection: str = Field(
        max_length=500, description="Why the user left and a better strategy, 1-2 sentences."
    )


@functools.lru_cache(maxsize=128)
def shortlist_schema(k: int) -> type[BaseModel]:
    """Return an answer schema whose `choice` is an enum over candidate numbers 1..k.

    The enum is what lets constrained decoding (llama.cpp JSON schema) never pick a non-candidate.
    Built once per k: creating a pydantic model costs milliseconds, and every step asks.
    """
    choices = Literal[tuple(range(1, k + 1))]  # type: ignore[valid-type]
    return create_model(
        "ShortlistChoice",
        choice=(choices, Field(description=f"Number of the chosen candidate, 1 to {k}.")),
        __doc__="The actor's recommendation in shortlist mode: one of the numbered candidates.",
    )


# ---------------------------------------------------------------- shared rendering

RULES = (
    "A user is shown one item per step and rates it 1-5. The user leaves when an item is rated "
    "below 2 or is too similar to one of the last 4 recommended (a repeat always is). The goal is "
    "the largest total rating over the whole session: keep the user, vary genres, never repeat."
)


@functools.lru_cache(maxsize=8192)  # titles repeat in every prompt of every step
def quote(text: str) -> str:
    """Return `text` as a JSON string literal: data stays data inside a prompt."""
    return json.dumps(text, ensure_ascii=False)


def item_line(title: str, genres: Sequence[str]) -> str:
    """Render one item as `"Title" [genre, genre]`."""
    shown = ", ".join(genres[:3])
    return f"{quote(title)} [{quote(shown)[1:-1]}]" if shown else quote(title)


def history_block(items: Sequence[tuple[str, Sequence[str]]]) -> str:
    """Render the user's logged history, oldest first."""
    if not items:
        return "(no history)"
    return "\n".join(f"- {item_line(t, g)}" for t, g in items)


def episode_block(steps: Sequence[tuple[str, float, bool]]) -> str:
    """Render this session so far: title, rating and whether the user stayed."""
    if not steps:
        return "(nothing recommended yet)"
    return "\n".join(
        f"- {quote(t)} rated {r:g}{'' if ok else ' (user left)'}" for t, r, ok in steps
    )


def list_block(texts: Sequence[str], empty: str) -> str:
    """Render quoted lines, or `empty` when there are none."""
    return "\n".join(f"- {quote(t)}" for t in texts) if texts else empty


# ---------------------------------------------------------------- roles

PLANNER_SYSTEM = (
    f"You plan a recommendation session. {RULES}\n"
    'Answer only with JSON: {"thought": "<your plan for the next item>"}.'
)
PLANNER_USER = (
    "User history (oldest first):\n{history}\n\n"
    "This session so far:\n{episode}\n\n"
    "Lessons from earlier sessions:\n{reflections}\n\n"
    "Plan the next recommendation."
)

ACTOR_SYSTEM = (
    f"You choose the next item to recommend. {RULES}\n"
    'Answer only with JSON: {"title": "<exact title of one item>"}.'
)
ACTOR_SHORTLIST_SYSTEM = (
    f"You choose the next item to recommend. {RULES}\n"
    'Answer only with JSON: {"choice": <number of one candidate>}.'
)
ACTOR_USER = (
    "User history (oldest first; the user owns these, recommend something new):\n{history}\n\n"
    "Already recommended this session (do not repeat):\n{episode}\n\n"
    "Plan: {thought}\n{explore}\n"
    "Memory of a similar past state (+ went well, - went badly):\n{hint}\n"
    "{candidates}"
    "Choose one item."
)
CANDIDATES = "\nCandidates:\n{lines}\n\n"


def explore_line(genres: Sequence[str]) -> str:
    """Render the exploration hint (the reference's "recommend {g1} and {g2} items"), or ""."""
    if not genres:
        return ""
    return f"Exploration hint: recommend {' and '.join(quote(g) for g in genres)} items.\n"


CRITIC_SYSTEM = (
    f"You judge a recommendation session. {RULES}\n"
    "Estimate the value of this point of the session: the ratings still to come, each counted as "
    "rating minus 3 and later ones discounted, as an integer from -5 (the user is about to leave) "
    'to 5 (many well-rated items to come). Answer only with JSON: {"value": <int>}.'
)
CRITIC_USER = (
    "User history (oldest first):\n{history}\n\n"
    "This session so far:\n{episode}\n\n"
    "Value of a near-identical past state: {hint}\n\n"
    "Estimate the value now."
)

REFLECTOR_SYSTEM = (
    f"You review a finished recommendation session. {RULES}\n"
    "Say in one or two sentences why the user left and what high-level strategy would keep them "
    'longer. Answer only with JSON: {"reflection": "<text>"}.'
)
REFLECTOR_USER = (
    "User history (oldest first):\n{history}\n\n"
    "The session:\n{episode}\n\n"
    "It ended because: {reason}. Total rating: {total:g} over {length} accepted items.\n\n"
    "Write the reflection."
)

QUIT_EXPLAINED = {
    "low_rating": "the user disliked the last item (rated below 2)",
    "similar": "the last item was too similar to a recent one",
    "repeat": "the last item repeated a recent one",
    "max_steps": "the session reached its step limit",
}
