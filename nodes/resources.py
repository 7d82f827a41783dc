"""Build the heavy objects a run needs from its JSON-native context, once per process.

The graph's state and context stay JSON-native (checkpoints, Studio); environments, models,
indexes and memories live here, cached by the context fields that determine them, so a thousand
episodes share one loaded model and one set of memories.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from langchain_core.language_models import BaseChatModel

from memory.embeddings import Embeddings, cached_embed, make_embeddings
from memory.stores import ActorMemory, CriticMemory, MacroMemory
from nodes.candidates import CandidateGenerator
from nodes.grounding import TitleIndex
from nodes.llm.cache import cached_model, close_stores
from nodes.llm.factory import forget_models, make_chat_model
from nodes.value_net import LearnedCritic
from simulator.build import EnvBundle, EnvConfig, build_env, distance_vectors
from simulator.paths import cache_dir

_lock = threading.RLock()
_cache: dict[tuple, Any] = {}


def _once(key: tuple, make: Any) -> Any:
    """Return the cached object for `key`, building it with `make()` the first time."""
    with _lock:
        if key not in _cache:
            _cache[key] = make()
        return _cache[key]


def clear_cache() -> None:
    """Forget every cached object, as a fresh process would start: resources, chat models (and
    the scripted double's fault cycles), open answer caches, negotiated structured-output modes
    and endpoint health. Tests call it around every test (one autouse fixture); runs, at start."""
    with _lock:
        _cache.clear()
    close_stores()  # the models that used them are gone with the resources
    forget_models()


class MemoEmbeddings:
    """Remember the latest texts' embeddings, so a step embeds its state once, not four times.

    The actor's hint, the critic's two records and the next step's hint all key memories by the
    same few state texts; with MiniLM or an API each repeat costs a model call, with any backend a
    worker-thread hop. Embeddings are deterministic per text, so answers are unchanged.
    """

    def __init__(self, inner: Embeddings, size: int = 1024) -> None:
        self.inner = inner
        self.spec = inner.spec
        self.size = size
        self._rows: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        """Return the vector size of the wrapped embeddings."""
        return self.inner.dim

    def clear(self) -> None:
        """Forget every remembered text (benchmarks start each configuration cold)."""
        with self._lock:
            self._rows.clear()

    def _lookup(self, texts: list[str]) -> list[np.ndarray | None]:
        with self._lock:
            rows = [self._rows.get(t) for t in texts]
            for text, row in zip(texts, rows, strict=True):
                if row is not None:
                    self._rows.move_to_end(text)
            return rows

    def _fill(self, texts: list[str], rows: list[np.ndarray | None], new: np.ndarray) -> np.ndarray:
        fresh = iter(np.asarray(new, dtype=np.float32))
        out = [row if row is not None else next(fresh) for row in rows]
        with self._lock:
            for text, row in zip(texts, out, strict=True):
                self._rows[text] = row
                self._rows.move_to_end(text)
            while len(self._rows) > self.size:
                self._rows.popitem(last=False)
        return np.stack(out) if out else np.zeros((0, self.dim), dtype=np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts as float32 [n, dim] unit rows, computing only those not remembered."""
        if isinstance(texts, str):
            return self.inner.embed(texts)  # let the backend raise its own error
        texts = list(texts)
        rows = self._lookup(texts)
        missing = [t for t, r in zip(texts, rows, strict=True) if r is None]
        if not missing and rows:  # all remembered (most lookups): nothing to store
            return np.stack(rows)  # type: ignore[arg-type]
        return self._fill(texts, rows, self.inner.embed(missing) if missing else [])

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed without blocking the event loop; remembered texts return at once."""
        if isinstance(texts, str):
            return await self.inner.aembed(texts)
        texts = list(texts)
        rows = self._lookup(texts)
        missing = [t for t, r in zip(texts, rows, strict=True) if r is None]
        if not missing and rows:  # all remembered (most lookups): nothing to store
            return np.stack(rows)  # type: ignore[arg-type]
        return self._fill(texts, rows, await self.inner.aembed(missing) if missing else [])


def embeddings_of(spec: str) -> MemoEmbeddings:
    """Return the process-wide embeddings of a spec, with the memo of recent texts."""
    return _once(("embeddings", spec), lambda: MemoEmbeddings(make_embeddings(spec)))


@dataclass
class Memories:
    """The three BiLLP memories of one memory folder."""

    macro: MacroMemory
    actor: ActorMemory
    critic: CriticMemory
    learned_critic: LearnedCritic
    path: Path
    write_lock: threading.Lock = field(default_factory=threading.Lock)

    def save(self) -> None:
        """Persist every memory atomically (called after each finished episode).

        The four write separate folders, so they are written at once: most of a save is
        waiting on fsync, and waiting four times in a row made it the largest per-episode cost.
        """
        with self.write_lock:
            parts = (self.macro, self.actor, self.critic, self.learned_critic)
            futures = [_SAVERS.submit(part.save) for part in parts]
            wait(futures)  # every write ends before the lock is released, failed or not
            for future in futures:
                future.result()  # the first failure is raised


_SAVERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="billp-save")


@dataclass
class Catalogue:
    """Titles and genres of the items, with the index that grounds free-text titles."""

    titles: list[str]
    genres: list[list[str]]
    index: TitleIndex
    embeddings: Embeddings

    def describe(self, item: int) -> tuple[str, list[str]]:
        """Return (title, genres) of an item."""
        return self.titles[item], self.genres[item]

    @cached_property
    def all_genres(self) -> list[str]:
        """Return every genre of the catalogue, sorted (the exploration hint draws from them)."""
        return sorted({g for genres in self.genres for g in genres})


@dataclass
class Resources:
    """Everything a node needs that is not episode state."""

    bundle: EnvBundle
    split: str
    catalogue: Catalogue
    memories: Memories
    llm: Any
    candidates: CandidateGenerator
    _ratings: dict[int, torch.Tensor] = field(default_factory=dict)
    texts: dict[tuple, str] = field(default_factory=dict, repr=False)
    """Rendered prompt blocks by what they show (`nodes.views`); a history renders once."""

    @cached_property
    def item_vectors(self) -> np.ndarray:
        """Return the split model's item vectors: they define item distance in the quit rule."""
        model = self.bundle.gt_model if self.split == "test" else self.bundle.train_model
        return distance_vectors(model).numpy()

    @property
    def tau(self) -> float:
        """Return the split's similarity threshold."""
        return self.bundle.tau if self.split == "test" else self.bundle.train_tau

    @property
    def window(self) -> int:
        """Return how many recent recommendations the similarity rule looks at."""
        return self.bundle.config.window

    def ratings_of(self, user: int) -> torch.Tensor:
        """Return this user's rating of every item under the split's model (computed once)."""
        if user not in self._ratings:
            if not 0 <= user < self.bundle.dataset.n_users:
                raise ValueError(
                    f"user_id {user} is not a user of {self.bundle.dataset.name} "
                    f"(0..{self.bundle.dataset.n_users - 1})"
                )
            test = self.split == "test"
            model = self.bundle.gt_model if test else self.bundle.train_model
            calibrator = self.bundle.gt_calibrator if test else self.bundle.train_calibrator
            with torch.inference_mode():
                scores = model.score_matrix(torch.tensor([user]))[0]
                self._ratings[user] = calibrator(scores, integer=test).float()
        return self._ratings[user]

    def history_of(self, user: int, length: int) -> list[int]:
        """Return the user's latest `length` logged positive items, oldest first."""
        return self.bundle.histories.get(user, [])[-length:]


def env_bundle(ctx: Any) -> EnvBundle:
    """Return the built environment of the context's dataset (built or loaded once)."""
    config = EnvConfig(dataset=ctx.dataset, seed=ctx.env_seed, logged_items=ctx.logged_items)
    key = ("env", ctx.dataset, ctx.data_dir, ctx.env_seed, ctx.logged_items)
    return _once(key, lambda: build_env(config, ctx.data_dir))


def memory_path(ctx: Any, variant: str | None = None) -> Path:
    """Return the memory folder of a context: explicit, or one per dataset, embedding and variant.

    Variants never share a default folder: Reflexion's reflections must not reach BiLLP's
    planner, nor an ablation's memories the full method's.
    """
    if ctx.memory_dir:
        return Path(ctx.memory_dir).expanduser()
    spec = ctx.embeddings.replace(":", "_").replace("/", "_")
    return cache_dir() / "memory" / f"{ctx.dataset}-{spec}-{variant or 'default'}"


def memories(ctx: Any, variant: str | None = None) -> Memories:
    """Return the macro, actor and critic memories stored under the context's memory folder.

    Keyed by folder and embedding only: hint rules are passed at call time (`nodes.views`), so a
    changed threshold takes effect at once, and one folder is never held by two objects.
    """
    path = memory_path(ctx, variant)
    kind = getattr(ctx, "memory_backend", "faiss")

    def make() -> Memories:
        emb = embeddings_of(ctx.embeddings)
        backend = None
        if kind == "store":  # the same stores over a LangGraph store (memory.store_backend)
            from memory.store_backend import StoreBackend, default_store

            scope = ("billp", ctx.dataset, variant or "default", f"seed-{ctx.seed}")
            backend = StoreBackend(default_store(emb.dim), scope)
        return Memories(
            macro=MacroMemory(emb, path / "macro", backend=backend),
            actor=ActorMemory(emb, path / "actor", backend=backend),
            critic=CriticMemory(emb, path / "critic", backend=backend),
            learned_critic=LearnedCritic(emb.dim, path / "value_net"),
            path=path,
        )

    return _once(("memories", str(path), ctx.embeddings, kind), make)


def catalogue(ctx: Any, bundle: EnvBundle) -> Catalogue:
    """Return the catalogue with title embeddings (cached on disk per dataset and spec)."""

    def make() -> Catalogue:
        emb = embeddings_of(ctx.embeddings)
        titles = bundle.dataset.titles()
        base = bundle.path or cache_dir() / "envs" / ctx.dataset
        spec = emb.spec.replace(":", "_").replace("/", "_")
        vectors = cached_embed(emb.inner, titles, Path(base) / f"titles-{spec}.npy")
        genres = [list(g) for g in bundle.dataset.items["genres"]]
        return Catalogue(titles, genres, TitleIndex(titles, np.asarray(vectors)), emb)

    return _once(("catalogue", id(bundle), ctx.embeddings), make)


def llm_spec(spec: str) -> str:
    """Map `scripted` to the BiLLP-aware test double; leave every other spec unchanged."""
    if spec == "scripted" or spec.startswith("scripted?"):
        import nodes.scripted_agent as agent  # registers its responder

        return f"scripted:{agent.NAME}{spec[len('scripted') :]}"
    return spec


SHAPING_FIELDS = (
    "dataset", "data_dir", "env_seed", "logged_items", "split", "embeddings", "memory_dir", "llm",
    "llm_cache", "temperature", "seed", "memory_backend",
)  # fmt: skip
"""The Context fields that decide which objects a `Resources` holds (its one cache key)."""

CALL_TIME_FIELDS = (
    "learn", "gamma", "reflection_k", "hint_rule", "actor_quantile",
    "critic_quantile", "actor_near", "actor_band", "critic_near", "explore", "max_steps",
    "grounding", "shortlist_k", "critic", "history_len",
)  # fmt: skip
"""The Context fields nodes read at call time: changing one never needs new resources."""


def _resources_key(ctx: Any, variant: str | None) -> tuple:
    """Return the cache key of a context's resources: every shaping field, plus where memories
    live by default (the cache folder and the variant) when no `memory_dir` is given."""
    where = None if ctx.memory_dir else (str(cache_dir()), variant)
    return ("resources-of", *(getattr(ctx, name) for name in SHAPING_FIELDS), where)


def get_resources(ctx: Any, variant: str | None = None) -> Resources:
    """Return the resources of a context (and graph variant), building what is missing."""
    # Every node asks once per step: a plain dict lookup before any key building or locking.
    key = _resources_key(ctx, variant)
    found = _cache.get(key)
    if found is not None:
        return found
    return _once(key, lambda: _build_resources(ctx, variant))


async def aget_resources(ctx: Any, variant: str | None = None) -> Resources:
    """Return the resources of a context; the first build (disk, models) runs in a thread.

    Nodes call this one: a LangGraph server (`langgraph dev`) runs them on its event loop and
    refuses blocking file I/O there.
    """
    found = _cache.get(_resources_key(ctx, variant))
    if found is not None:
        return found
    return await asyncio.to_thread(get_resources, ctx, variant)


def chat_model(ctx: Any) -> BaseChatModel:
    """Return the context's chat model, behind its answer cache when `ctx.llm_cache` names one."""
    model = make_chat_model(llm_spec(ctx.llm), temperature=ctx.temperature, seed=ctx.seed)
    if ctx.llm_cache:
        return cached_model(model, ctx.llm, ctx.llm_cache, ctx.temperature, ctx.seed)
    return model


def _build_resources(ctx: Any, variant: str | None) -> Resources:
    bundle = env_bundle(ctx)
    return Resources(
        bundle=bundle,
        split=ctx.split,
        catalogue=catalogue(ctx, bundle),
        memories=memories(ctx, variant),
        llm=chat_model(ctx),
        candidates=_once(("candidates", id(bundle)), lambda: CandidateGenerator(bundle)),
    )
