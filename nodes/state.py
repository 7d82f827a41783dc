"""Episode state: JSON-native, so checkpoints, the Studio API and exports carry it unchanged."""

from __future__ import annotations

import operator
from typing import Annotated, Any

# pydantic (the LangGraph server's schema endpoint) rejects typing.TypedDict before 3.12
from typing_extensions import TypedDict

from nodes.views import add_counts


class InputState(TypedDict, total=False):
    """What a caller sends: the dataset user whose session to simulate."""

    user_id: int


class StepRecord(TypedDict, total=False):
    """One step, complete enough that a report or an SFT export never recomputes anything."""

    step: int
    thought: str
    action: str
    item: int
    title: str
    replaced: bool
    match: str
    rating: float
    reward: float
    accepted: bool
    quit_reason: str | None
    value: float | None
    advantage: float | None
    actor_hint: dict[str, int] | None
    """The actor-memory hint shown ({item id: +1/-1}); None when no state was near enough."""
    hint_distance: float | None
    """Squared L2 to the nearest remembered actor state, whether or not it was near enough."""
    hint_radius: float | None
    """The derived rule's radius when the actor asked (None for the reference rule)."""
    explore: list[str]
    """The exploration hint's genres shown to the actor (empty when off)."""
    candidates: list[int] | None
    """Shortlist candidates shown to the actor (shortlist mode)."""
    value_before: float | None
    """V(s), the critic's value of the state the action was taken in."""
    target: float | None
    """The critic's TD target r + gamma * V(s') on its own scale (`nodes.lessons`)."""
    critic_hint: float | None
    critic_distance: float | None
    """Squared L2 to the nearest remembered critic state."""
    fallbacks: list[str]
    usage: dict[str, dict[str, float]]


class State(InputState, total=False):
    """The whole episode. Nodes return only the fields they change."""

    variant: str | None
    """The graph variant playing (billp, reflexion, ...): its memories' default folder."""
    history: list[int]
    """The user's latest logged items (ids), oldest first: what the agents are shown."""
    reflections: list[str]
    """Reflections retrieved from macro memory at the start of the episode."""
    recommended: list[int]
    """Items recommended so far in this episode, in order (accepted or not)."""
    rewards: list[float]
    """Reward of each step (0 for the item that made the user leave)."""
    thought: str
    """The planner's latest plan."""
    pending: dict[str, Any]
    """The current step's record while it is being built (actor -> user -> critic)."""
    steps: Annotated[list[StepRecord], operator.add]
    """Finished step records, appended by the node that closes a step."""
    value: float
    """V(s) of the current state, as the critic last estimated it (V(s0) = 0)."""
    done: bool
    quit_reason: str | None
    """Why the episode ended: low_rating, similar, repeat, max_steps."""
    reflection: str | None
    """The reflection written when the episode ended (None for variants without a reflector)."""
    usage: Annotated[dict[str, dict[str, float]], add_counts]
    """LLM calls, tokens and seconds per node, summed over the episode."""
    fallbacks: Annotated[dict[str, int], add_counts]
    """How often each node had to use its documented fallback (unusable model output)."""
