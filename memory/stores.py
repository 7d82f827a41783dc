"""Hold BiLLP's three memories: macro reflections and the micro actor and critic hints.

Each store embeds texts with one `Embeddings` and keeps them in a `VectorMemory`. The
thresholds are squared L2 distances between unit vectors (0 = same text, 2 = opposite), as in
the reference implementation. A store opened with `read_only=True` (frozen evaluation) raises
`ReadOnlyMemoryError` on every write and makes `save()` a no-op, so the same caller code runs in
both phases and a test run can never alter what training learnt.

When a stored state is near enough to hint is a `memory.rules.HintRule`, passed at call time; the
sample a derived rule needs (the distances queries saw to their nearest stored state, each seen
before its own episode's states were stored, i.e. what a new user's query sees) is kept with the
memory by `observe`, so it is saved, snapshotted and restored with it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from memory.embeddings import Embeddings
from memory.rules import OBSERVED_KEY, OBSERVED_SIZE, HintRule
from memory.vector import ENTRIES_FILE, INDEX_FILE, JSON, Hit, VectorMemory
from storage.files import sha256_bytes


class _TextStore:
    """Share embedding, loading, saving and the read-only rule among the three stores."""

    kind = "store"

    def __init__(
        self,
        embeddings: Embeddings,
        path: Path | str | None = None,
        *,
        read_only: bool = False,
        backend: Any = None,
    ) -> None:
        # backend: what opens the vector memory (default FAISS; `memory.store_backend` for a
        # LangGraph store): called like VectorMemory(dim, ...), with VectorMemory.load's .load.
        opener = backend or VectorMemory
        self.embeddings = embeddings
        self.path = Path(path) if path is not None else None
        meta: dict[str, JSON] = {"kind": self.kind, "embeddings": embeddings.spec}
        adopted = False  # meta given to an empty memory: not on disk yet
        if self.path is None:
            self.memory = opener(embeddings.dim, meta=meta, read_only=read_only)
        else:
            self.memory = opener.load(self.path, embeddings.dim, read_only=read_only)
            saved = {k: self.memory.meta.get(k) for k in meta}
            if len(self.memory) == 0 and not self.memory.meta:
                self.memory.meta, adopted = meta, True
            elif saved != meta:
                raise ValueError(
                    f"memory at {self.path} is a {saved['kind']} memory embedded with "
                    f"{saved['embeddings']!r}, but a {self.kind} memory with {embeddings.spec!r} "
                    "opened it: use the same embeddings spec, or a new folder"
                )
        self._observed_version = 0
        self._window: list[float] | None = None  # meta's observed list, as `_observations` saw it
        self._sorted: list[float] = []
        self._radius_memo: tuple[tuple, float | None] = ((), None)
        # Changed since the files were last written or read? Only then does save() write.
        self._stamp = self._disk_stamp()
        self._dirty = adopted or self._stamp is None

    @property
    def read_only(self) -> bool:
        """Whether writes are refused (frozen evaluation)."""
        return self.memory.read_only

    def __len__(self) -> int:
        return len(self.memory)

    def _disk_stamp(self) -> tuple | None:
        """Return (inode, mtime, size) of both files, or None when either is missing."""
        if self.path is None:
            return None
        try:
            stats = [(self.path / name).stat() for name in (INDEX_FILE, ENTRIES_FILE)]
        except OSError:
            return None
        return tuple((st.st_ino, st.st_mtime_ns, st.st_size) for st in stats)

    def _changed(self) -> None:
        """Mark the store for the next save; called after every write the store makes."""
        self._dirty = True

    def save(self) -> None:
        """Persist to `path` (atomic); a read-only or path-less store has nothing to write.

        An unchanged store whose files are still the ones it wrote or read is skipped: every
        save rewrites the whole index and entries with two fsyncs, and grows with the memory.
        Files replaced or removed underneath (a snapshot restored) are written again.
        """
        if self.path is None or self.read_only:
            return
        if not self._dirty and self._stamp is not None and self._stamp == self._disk_stamp():
            return
        self._dirty = False  # before writing: a concurrent write marks it again
        try:
            self.memory.save(self.path)
        except BaseException:
            self._dirty = True
            raise
        self._stamp = self._disk_stamp()

    @property
    def observed(self) -> list[float]:
        """Return the nearest-stored distances queries observed (newest last; for `HintRule`)."""
        return list(self._observations()[0])

    def _observations(self) -> tuple[list[float], list[float]]:
        """Return the observed window (the list kept in meta) and a sorted copy of it.

        Both are kept up to date by `observe`; they are rebuilt only when meta holds another
        list (a memory loaded or replaced underneath).
        """
        values = self.memory.meta.get(OBSERVED_KEY)
        unchanged = values is self._window or (values is None and self._window == [])
        if self._window is None or not unchanged:
            window = [float(v) for v in values] if isinstance(values, list) else []
            self._window, self._sorted = window, sorted(window)
            self._observed_version += 1
            if values is not None:
                self.memory.meta[OBSERVED_KEY] = window
        return self._window, self._sorted

    def observe(self, distances: Sequence[float | None]) -> None:
        """Add distances that queries saw to their nearest stored state (kept: the newest 2,000).

        Called when an episode's lessons are written, with its states' distances to the memory
        as it was before any of them was stored: the sample a derived `HintRule` takes its
        quantile from (what a state of a user the memory has not seen finds).
        """
        fresh = [round(float(d), 6) for d in distances if d is not None and math.isfinite(d)]
        if not fresh:
            return
        self.memory.check_writable()
        window, ordered = self._observations()
        window.extend(fresh)
        for value in fresh:
            bisect.insort(ordered, value)
        for value in window[: max(0, len(window) - OBSERVED_SIZE)]:
            del ordered[bisect.bisect_left(ordered, value)]
        del window[: max(0, len(window) - OBSERVED_SIZE)]
        self.memory.meta[OBSERVED_KEY] = window
        self._observed_version += 1
        self._changed()

    async def anearest_distances(self, texts: Sequence[str]) -> list[float]:
        """Return each text's squared L2 to its nearest stored state (empty if nothing stored)."""
        if len(self.memory) == 0 or not texts:
            return []
        vectors = await self.embeddings.aembed(list(texts))
        return [hits[0].sq_l2 for hits in self.memory.search(vectors, 1) if hits]

    def radius(self, rule: HintRule) -> float | None:
        """Return the squared-L2 radius inside which a derived `rule` fires here, or None.

        Cached per observation sample: every step asks, the sample changes once per batch.
        """
        if rule.quantile is None:
            return None
        ordered = self._observations()[1]
        key = (self._observed_version, rule.quantile)
        if self._radius_memo[0] != key:
            self._radius_memo = (key, rule.radius(ordered, presorted=True))
        return self._radius_memo[1]

    def fires(self, sq_l2: float | None, rule: HintRule) -> bool:
        """Return whether a nearest stored state at `sq_l2` is close enough under `rule`."""
        return sq_l2 is not None and rule.fires(sq_l2, self.radius(rule))

    def _vector(self, text: str) -> np.ndarray:
        return self.embeddings.embed([text])[0]

    async def _avector(self, text: str) -> np.ndarray:
        return (await self.embeddings.aembed([text]))[0]

    def _nearest(self, vector: np.ndarray) -> Hit | None:
        hits = self.memory.search(vector, 1)[0]
        return hits[0] if hits else None


class MacroMemory(_TextStore):
    """Keep reflections, found again by how similar a new user's history is to the old one's."""

    kind = "macro"

    @staticmethod
    def _key(reflection: str, context_text: str) -> str:
        # Content-addressed: re-adding the same reflection (e.g. on resume) is idempotent.
        return sha256_bytes(f"{context_text}\0{reflection}".encode())[:32]

    def _payload(self, reflection: str, context_text: str, meta: dict | None) -> JSON:
        if not isinstance(reflection, str) or not reflection.strip():
            raise ValueError("a reflection must be non-empty text")
        return {"reflection": reflection, "context": context_text, "meta": meta}

    def add(self, reflection: str, context_text: str, meta: dict | None = None) -> None:
        """Store `reflection`, keyed by the embedding of `context_text` (the user's history)."""
        self.memory.check_writable()
        payload = self._payload(reflection, context_text, meta)
        key = self._key(reflection, context_text)
        self.memory.upsert(key, self._vector(context_text), payload)
        self._changed()

    async def aadd(self, reflection: str, context_text: str, meta: dict | None = None) -> None:
        """Store a reflection without blocking the event loop while embedding."""
        self.memory.check_writable()
        payload = self._payload(reflection, context_text, meta)
        key = self._key(reflection, context_text)
        self.memory.upsert(key, await self._avector(context_text), payload)
        self._changed()

    def _reflections(self, vector: np.ndarray, k: int) -> list[str]:
        return [hit.payload["reflection"] for hit in self.memory.search(vector, k)[0]]  # type: ignore[index]

    def retrieve(self, query_text: str, k: int = 2) -> list[str]:
        """Return the `k` reflections whose contexts best match `query_text` (all if ≤ k stored)."""
        if len(self.memory) == 0:
            return []
        return self._reflections(self._vector(query_text), k)

    async def aretrieve(self, query_text: str, k: int = 2) -> list[str]:
        """Retrieve reflections without blocking the event loop while embedding."""
        if len(self.memory) == 0:
            return []
        return self._reflections(await self._avector(query_text), k)

    def sample(self, k: int, rng: np.random.Generator) -> list[str]:
        """Return `k` reflections drawn at random without replacement (Reflexion's retrieval).

        Entries are drawn in key order, so the same generator state gives the same reflections
        wherever the memory was loaded. No similarity search is involved.
        """
        keys = sorted(self.memory.keys())
        if len(keys) > k:
            keys = [keys[i] for i in sorted(rng.choice(len(keys), size=k, replace=False))]
        return [self.memory.get(key)["reflection"] for key in keys]  # type: ignore[index]


@dataclass(frozen=True)
class ActorHint:
    """What the nearest remembered state taught: {item label: +1 good / -1 bad}, and how near."""

    labels: dict[str, int]
    sq_l2: float
    state: str


class CriticHint(NamedTuple):
    """The value remembered for a (near-)identical state, and its squared L2 distance."""

    value: float
    sq_l2: float


class _HintStore(_TextStore):
    """Share the micro memories' lookup: the nearest stored state, and whether a rule accepts it.

    Subclasses turn a search hit into their hint type (`_as_hint`) and set `rule`, the default
    rule when a caller passes none.
    """

    rule: HintRule

    @staticmethod
    def _as_hint(hit: Hit | None) -> Any:
        raise NotImplementedError

    def nearest(self, state_text: str) -> Any:
        """Return the nearest stored state's hint and distance, however far (None if empty)."""
        if len(self.memory) == 0:
            return None
        return self._as_hint(self._nearest(self._vector(state_text)))

    async def anearest(self, state_text: str) -> Any:
        """Return the nearest stored state without blocking the event loop while embedding."""
        if len(self.memory) == 0:
            return None
        return self._as_hint(self._nearest(await self._avector(state_text)))

    def hint(self, state_text: str, rule: HintRule | None = None) -> Any:
        """Return the nearest stored state's hint when `rule` accepts it, else None."""
        found = self.nearest(state_text)
        return found if found and self.fires(found.sq_l2, rule or self.rule) else None

    async def ahint(self, state_text: str, rule: HintRule | None = None) -> Any:
        """Return the hint without blocking the event loop while embedding."""
        found = await self.anearest(state_text)
        return found if found and self.fires(found.sq_l2, rule or self.rule) else None


class ActorMemory(_HintStore):
    """Remember which items turned out well or badly in which state, for the Actor's hint.

    The hint fires when `HintRule` accepts the nearest stored state's distance. The rule is
    passed at call time (a run's context decides it); the constructor's `near` / `band` are the
    default rule, the reference implementation's numbers.
    """

    kind = "actor"

    def __init__(
        self,
        embeddings: Embeddings,
        path: Path | str | None = None,
        near: float = 0.01,
        band: tuple[float, float] | None = (0.3, 0.5),
        *,
        read_only: bool = False,
        backend: Any = None,
    ) -> None:
        self.rule = HintRule.reference(near, band)
        super().__init__(embeddings, path, read_only=read_only, backend=backend)

    @property
    def near(self) -> float:
        """Return the default rule's near-identical distance."""
        return self.rule.near

    @property
    def band(self) -> tuple[float, float] | None:
        """Return the default rule's band."""
        return self.rule.band

    @staticmethod
    def _merge(label: str, advantage: float) -> Callable[[JSON | None], JSON]:
        if not isinstance(label, str) or not label:
            raise ValueError("an actor label (item title or id) must be non-empty text")
        if not math.isfinite(advantage):
            raise ValueError(f"advantage must be finite, got {advantage}")
        sign = 1 if advantage >= 0 else -1

        def merge(old: JSON | None) -> JSON:
            return {**(old if isinstance(old, dict) else {}), label: sign}

        return merge

    def record(self, state_text: str, label: str, advantage: float) -> None:
        """Mark `label` +1 (advantage >= 0) or -1 in state `state_text`; a revisit overwrites."""
        self.memory.check_writable()
        merge = self._merge(label, advantage)
        vector = None if state_text in self.memory else self._vector(state_text)
        self.memory.update(state_text, merge, vector=vector)
        self._changed()

    async def arecord(self, state_text: str, label: str, advantage: float) -> None:
        """Record without blocking the event loop while embedding."""
        self.memory.check_writable()
        merge = self._merge(label, advantage)
        vector = None if state_text in self.memory else await self._avector(state_text)
        self.memory.update(state_text, merge, vector=vector)
        self._changed()

    @staticmethod
    def _as_hint(hit: Hit | None) -> ActorHint | None:
        if hit is None:
            return None
        return ActorHint(labels=dict(hit.payload), sq_l2=hit.sq_l2, state=hit.key)  # type: ignore[arg-type]


class CriticMemory(_HintStore):
    """Remember value targets `r + gamma * V(s')` per state, for the Critic's hint."""

    kind = "critic"

    def __init__(
        self,
        embeddings: Embeddings,
        path: Path | str | None = None,
        near: float = 0.01,
        *,
        read_only: bool = False,
        backend: Any = None,
    ) -> None:
        self.rule = HintRule.reference(near)
        super().__init__(embeddings, path, read_only=read_only, backend=backend)

    @property
    def near(self) -> float:
        """Return the default rule's near-exact distance."""
        return self.rule.near

    @staticmethod
    def _payload(target: float) -> JSON:
        target = float(target)
        if not math.isfinite(target):
            raise ValueError(f"a critic target must be finite, got {target}")
        return {"value": target}

    def record(self, state_text: str, target: float) -> None:
        """Set the value target of state `state_text`, replacing an earlier one."""
        self.memory.check_writable()
        payload = self._payload(target)
        vector = None if state_text in self.memory else self._vector(state_text)
        self.memory.update(state_text, lambda _old: payload, vector=vector)
        self._changed()

    async def arecord(self, state_text: str, target: float) -> None:
        """Record without blocking the event loop while embedding."""
        self.memory.check_writable()
        payload = self._payload(target)
        vector = None if state_text in self.memory else await self._avector(state_text)
        self.memory.update(state_text, lambda _old: payload, vector=vector)
        self._changed()

    @staticmethod
    def _as_hint(hit: Hit | None) -> CriticHint | None:
        if hit is None:
            return None
        return CriticHint(value=float(hit.payload["value"]), sq_l2=hit.sq_l2)  # type: ignore[index]
