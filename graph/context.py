"""Run-time configuration of a BiLLP graph run.

Every field is JSON-native (names, paths, numbers) so LangGraph Studio can render and send it;
objects (environments, models, vector indexes) are built from it once per process by
`graph.resources`, never stored here or in the state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(kw_only=True)
class Context:
    """What a graph run uses: the world, the LLM, the memories and the method's knobs."""

    dataset: str = "synthetic"
    """Dataset whose simulator plays the user: steam, amazon, csv or synthetic."""

    data_dir: str | None = None
    """Raw data folder; default `$BILLP_DATA` or `../shared/data` when present."""

    split: Literal["train", "test"] = "test"
    """Which environment rates the user: `train` (model fit on training users) or `test` (truth)."""

    env_seed: int = 0
    """Seed of the environment build (user split, user model); keep it fixed across runs."""

    llm: str = "local"
    """Chat model spec: `local` (embedded SmolLM2), `openai:MODEL`, or `scripted` (test double)."""

    embeddings: str = "minilm"
    """Embedding spec for memories and grounding: `minilm`, `hashing`, or `openai:MODEL`."""

    memory_dir: str | None = None
    """Folder holding macro/actor/critic memories; default `$BILLP_CACHE/memory/<dataset>`."""

    learn: bool = True
    """Write memories (training); False freezes them (evaluation reads only)."""

    gamma: float = 0.5
    """Discount in the advantage A = r + gamma * V(s') - V(s)."""

    reflection_k: int = 2
    """How many reflections the planner is shown (the most similar to the user's history)."""

    actor_near: float = 0.01
    """Actor hint used when the nearest stored state's squared L2 distance is below this..."""

    actor_band: tuple[float, float] = (0.3, 0.5)
    """...or inside this band (the reference's rule, on unit vectors)."""

    critic_near: float = 0.01
    """Critic hint used only when the nearest stored state is closer than this (squared L2)."""

    max_steps: int = 50
    """Recommendations per episode before it is truncated."""

    temperature: float = 0.5
    """Sampling temperature of every LLM role."""

    grounding: Literal["free", "shortlist"] = "free"
    """`free`: the actor writes a title, mapped to the catalogue; `shortlist`: it picks 1 of K."""

    shortlist_k: int = 10
    """Candidates shown to the actor in shortlist mode (item-CF on training logs + diversity)."""

    critic: Literal["llm", "learned"] = "llm"
    """`llm`: the LLM values states; `learned`: a small torch value network trained by TD(0)."""

    history_len: int = 15
    """How many of the user's latest logged items the agents are shown."""

    seed: int = 0
    """Seed of the LLM sampling and of any tie-breaking in the run."""
