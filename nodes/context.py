"""Run-time configuration of a BiLLP graph run.

Every field is JSON-native (names, paths, numbers) so LangGraph Studio can render and send it;
objects (environments, models, vector indexes) are built from it once per process by
`nodes.resources`, never stored here or in the state. It lives in `nodes/` so agents can
type their runtime as `Runtime[Context]`; `graph` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(kw_only=True, frozen=True)
class Context:
    """What a graph run uses: the world, the LLM, the memories and the method's knobs.

    Frozen: one run's settings never change under it (`dataclasses.replace` makes a variant).
    The fields that decide which objects a run uses form the resource key
    (`nodes.resources.SHAPING_FIELDS`); every other field is read at call time by the nodes.
    """

    dataset: str = "synthetic"
    """Dataset whose simulator plays the user: steam, amazon, csv or synthetic."""

    data_dir: str | None = None
    """Raw data folder; default `$BILLP_DATA` or `../shared/data` when present."""

    split: Literal["train", "test"] = "test"
    """Which environment rates the user: `train` (model fit on training users) or `test` (truth)."""

    env_seed: int = 0
    """Seed of the environment build (user split, user model); keep it fixed across runs."""

    logged_items: Literal["exclude", "allow"] = "exclude"
    """`exclude`: items in a user's logged history are never recommended to them (a recommender
    does not re-sell what a user owns; the env refuses them); `allow`: reference-style runs."""

    llm: str = "local"
    """Chat model spec: `local` (embedded SmolLM2), `openai:MODEL`, or `scripted` (test double)."""

    llm_cache: str | None = None
    """SQLite file caching LLM answers (`nodes.llm.cache`), None for none. Experiments set it to
    the run's cache; each call's sampling seed is in the key, so results equal uncached ones."""

    embeddings: str = "minilm"
    """Embedding spec for memories and grounding: `minilm`, `hashing`, or `openai:MODEL`."""

    memory_dir: str | None = None
    """Folder of the macro/actor/critic memories; default one per dataset, embedding and graph
    variant (`$BILLP_CACHE/memory/<dataset>-<embeddings>-<variant>`), so variants never share."""

    memory_backend: Literal["faiss", "store"] = "faiss"
    """Where memories live: `faiss` (files in `memory_dir`), or `store`: a LangGraph store with
    a vector index (Postgres + pgvector at `$BILLP_STORE_URI`, else in memory), namespaced by
    dataset, method and seed (`memory.store_backend`); same retrieval and results."""

    learn: bool | None = None
    """Write memories: True, False (frozen: read only), or None = only when `split` is `train`,
    so playing the test env never changes what training learnt unless asked."""

    gamma: float = 0.5
    """Discount in the advantage A = r + gamma * V(s') - V(s)."""

    reflection_k: int = 2
    """How many reflections the planner is shown (BiLLP: the most similar to the user's history;
    Reflexion: sampled at random, as the reference ran it)."""

    hint_rule: Literal["derived", "reference"] = "derived"
    """When a remembered state is near enough to hint (`memory.rules`): `derived` fires within the
    quantile below of the distances queries observed, which fits any embedding; `reference` uses
    the reference's fixed squared-L2 numbers, tuned for its own embedding model."""

    actor_quantile: float = 0.5
    """Derived rule: the actor hint fires when the nearest state is at most this quantile."""

    critic_quantile: float = 0.25
    """Derived rule: the critic hint fires when the nearest state is at most this quantile."""

    actor_near: float = 0.01
    """Both rules: the actor hint always fires below this squared L2 (a near-identical state)."""

    actor_band: list[float] = field(default_factory=lambda: [0.3, 0.5])
    """Reference rule only: the actor hint also fires inside this [low, high] squared-L2 band."""

    critic_near: float = 0.01
    """Both rules: the critic hint always fires below this squared L2 (a near-identical state)."""

    explore: bool = True
    """Add the reference's exploration hint to every actor prompt: two genres, drawn per step
    from those not among the last 4 items' genres."""

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
    """Run seed: every random draw (LLM sampling seed, exploration genres, Reflexion's sample) is
    derived from (seed, user, step, role), so results do not depend on concurrency."""
