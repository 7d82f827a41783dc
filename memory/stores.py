"""Hold BiLLP's three memories: macro reflections and the micro actor and critic hints.

Each store embeds texts with one `Embeddings` and keeps them in a `VectorMemory`. The
thresholds are squared L2 distances between unit vectors (0 = same text, 2 = opposite), as in
the reference implementation. A store opened with `read_only=True` (frozen evaluation) raises
`ReadOnlyMemoryError` on every write and makes `save()` a no-op, so the same caller code runs in
both phases and a test run can never alter what training learnt.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from memory.embeddings import Embeddings
from memory.vector import ENTRIES_FILE, INDEX_FILE, JSON, Hit, VectorMemory
from simulator.files import sha256_bytes


class _TextStore:
    """Share embedding, loading, saving and the read-only rule among the three stores."""

    kind = "store"

    def __init__(
        self, embeddings: Embeddings, path: Path | str | None = None, *, read_only: bool = False
    ) -> None:
        self.embeddings = embeddings
        self.path = Path(path) if path is not None else None
        meta: dict[str, JSON] = {"kind": self.kind, "embeddings": embeddings.spec}
        adopted = False  # meta given to an empty memory: not on disk yet
        if self.path is None:
            self.memory = VectorMemory(embeddings.dim, meta=meta, read_only=read_only)
        else:
            self.memory = VectorMemory.load(self.path, embeddings.dim, read_only=read_only)
            saved = {k: self.memory.meta.get(k) for k in meta}
            if len(self.memory) == 0 and not self.memory.meta:
                self.memory.meta, adopted = meta, True
            elif saved != meta:
                raise ValueError(
                    f"memory at {self.path} is a {saved['kind']} memory embedded with "
                    f"{saved['embeddings']!r}, but a {self.kind} memory with {embeddings.spec!r} "
                    "opened it: use the same embeddings spec, or a new folder"
                )
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


def _check_near(near: float) -> float:
    if not 0.0 <= near <= 4.0:
        raise ValueError(f"near is a squared L2 distance in [0, 4], got {near}")
    return near


class ActorMemory(_TextStore):
    """Remember which items turned out well or badly in which state, for the Actor's hint.

    The hint fires when the nearest stored state is near-identical (sq_l2 < `near`) or lies in
    `band` (inclusive). The band is the reference implementation's rule, kept so results can be
    compared; pass `band=None` to use near-identical matches only.
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
    ) -> None:
        self.near = _check_near(near)
        if band is not None and not 0.0 <= band[0] <= band[1] <= 4.0:
            raise ValueError(f"band must be (low, high) with 0 <= low <= high <= 4, got {band}")
        self.band = band
        super().__init__(embeddings, path, read_only=read_only)

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

    def _accept(self, hit: Hit | None) -> ActorHint | None:
        if hit is None:
            return None
        in_band = self.band is not None and self.band[0] <= hit.sq_l2 <= self.band[1]
        if hit.sq_l2 < self.near or in_band:
            return ActorHint(labels=dict(hit.payload), sq_l2=hit.sq_l2, state=hit.key)  # type: ignore[arg-type]
        return None

    def hint(self, state_text: str) -> ActorHint | None:
        """Return the nearest stored state's labels when it is close enough, else None."""
        if len(self.memory) == 0:
            return None
        return self._accept(self._nearest(self._vector(state_text)))

    async def ahint(self, state_text: str) -> ActorHint | None:
        """Return the hint without blocking the event loop while embedding."""
        if len(self.memory) == 0:
            return None
        return self._accept(self._nearest(await self._avector(state_text)))


class CriticMemory(_TextStore):
    """Remember value targets `r + gamma * V(s')` per state, for the Critic's hint."""

    kind = "critic"

    def __init__(
        self,
        embeddings: Embeddings,
        path: Path | str | None = None,
        near: float = 0.01,
        *,
        read_only: bool = False,
    ) -> None:
        self.near = _check_near(near)
        super().__init__(embeddings, path, read_only=read_only)

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

    def _accept(self, hit: Hit | None) -> CriticHint | None:
        if hit is None or hit.sq_l2 >= self.near:
            return None
        return CriticHint(value=float(hit.payload["value"]), sq_l2=hit.sq_l2)  # type: ignore[index]

    def hint(self, state_text: str) -> CriticHint | None:
        """Return (value, sq_l2) of the nearest stored state only on a near-exact match."""
        if len(self.memory) == 0:
            return None
        return self._accept(self._nearest(self._vector(state_text)))

    async def ahint(self, state_text: str) -> CriticHint | None:
        """Return the hint without blocking the event loop while embedding."""
        if len(self.memory) == 0:
            return None
        return self._accept(self._nearest(await self._avector(state_text)))
