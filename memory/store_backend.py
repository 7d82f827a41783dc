"""Keep BiLLP's memories in a LangGraph `BaseStore` (InMemoryStore, PostgresStore + pgvector).

`StoreVectorMemory` has `VectorMemory`'s interface (add/upsert/update/get/search/len/save/load,
read-only), so `memory.stores` keeps its retrieval rules above it unchanged. Each entry is one
store item under a namespace `("billp", dataset, method, "seed-S", generation, kind)`; its value
holds the payload (as the same sorted JSON text FAISS keeps, so what callers read is identical),
an insertion number, and the unit vector itself, base64-encoded in the indexed field `vec`.

The store's vector index embeds that field with `decode_vectors`, which decodes instead of
embedding: the store indexes exactly the vectors BiLLP computed, and a query is the encoded
query vector. The store ranks by cosine (= inner product on unit vectors); the few best are then
re-scored with faiss, as the FAISS backend scores them, so distances are bit-identical and the
hint thresholds above see the same numbers with either backend.

Writes go to the store at once (one item each). The memory folder keeps only `store.json`:
the namespace's generation (a fresh folder starts a fresh namespace) and the memory's meta,
written by `save()`. So the protocol's snapshots of the folder still name a consistent state:
after a kill mid-batch the store may already hold part of that batch's lessons, and the batch
is relearnt from `episodes.jsonl` on resume; every lesson write sets a value (labels, targets,
content-addressed reflections), so writing a batch again over its own writes changes nothing.
A store that holds fewer entries than the folder recorded (an InMemoryStore of a process that
ended) is refused with `MemoryCorruptError` instead of serving half a memory.
"""

from __future__ import annotations

import base64
import json
import math
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from langgraph.store.base import BaseStore

from memory.vector import (
    JSON,
    Hit,
    MemoryCorruptError,
    ReadOnlyMemoryError,
    VectorMemory,
    _encode,
)
from storage.files import atomic_write_json

STATE_FILE = "store.json"
FORMAT = "billp.store_memory/1"
STORE_URI_ENV = "BILLP_STORE_URI"
"""A Postgres URI (postgresql://...) for `memory_backend="store"`; unset: one in-memory store."""
_MARGIN = 8  # extra candidates re-scored, so near-ties ranked differently by the store still fit
_PAGE = 1000
_TIE_TOL = 1e-5  # store (cosine, float64) and faiss (float32) scores differ by ~1e-7


def encode_vector(vector: np.ndarray) -> str:
    """Return a unit float32 vector as the text the store indexes."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode()


def decode_vectors(texts: Sequence[str]) -> list[list[float]]:
    """The store's `embed`: decode the vectors `encode_vector` wrote (no model runs)."""
    return [np.frombuffer(base64.b64decode(t), dtype="<f4").tolist() for t in texts]


def index_config(dim: int) -> dict[str, Any]:
    """Return the store index config for `dim`-dimensional memories (also in langgraph.json)."""
    return {"dims": dim, "embed": decode_vectors, "fields": ["vec"]}


def faiss_top_k(pairs: Sequence[tuple[float, int, Any]], k: int) -> list[tuple[float, int, Any]]:
    """Return the k best of (score, insertion number, tag) as faiss's IndexFlatIP returns them.

    faiss scans rows in insertion order through a k-slot heap whose worst slot is replaced only
    by a strictly higher score; among equal scores the lower row number counts as worse. The
    result lists (score, row) from best to worst. Replaying that heap keeps ties identical.
    """
    heap = [(-math.inf, -1, None)] * k
    for pair in sorted(pairs, key=lambda p: p[1]):
        worst = min(range(k), key=lambda i: heap[i][:2])
        if pair[0] > heap[worst][0]:
            heap[worst] = pair
    return sorted((p for p in heap if p[1] >= 0), key=lambda p: (-p[0], -p[1]))


class StoreVectorMemory:
    """`VectorMemory`'s interface over one namespace of a LangGraph store.

    Keys this process saw (loaded at open, or written here) are kept with their insertion number
    for `len`, `in` and tie-breaking; search and reads always ask the store.
    """

    def __init__(
        self,
        store: BaseStore,
        namespace: tuple[str, ...],
        dim: int,
        path: Path | str | None = None,
        *,
        meta: dict[str, JSON] | None = None,
        read_only: bool = False,
    ) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.store = store
        self.namespace = tuple(namespace)
        self.dim = dim
        self.path = Path(path) if path is not None else None
        self.meta: dict[str, JSON] = dict(meta or {})
        self.read_only = read_only
        self._seq: dict[str, int] = {}
        self._lock = threading.RLock()
        offset = 0
        while True:  # the keys already stored, in insertion order
            items = store.search(self.namespace, limit=_PAGE, offset=offset)
            for item in items:
                self._seq[item.key] = int(item.value["seq"])
            if len(items) < _PAGE:
                break
            offset += _PAGE
        self._seq = dict(sorted(self._seq.items(), key=lambda kv: kv[1]))

    def __len__(self) -> int:
        with self._lock:
            return len(self._seq)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._seq

    @property
    def index_kind(self) -> str:
        """Name the index: the store's own vector search."""
        return f"store:{type(self.store).__name__}"

    def keys(self) -> list[str]:
        """Return the keys in insertion order."""
        with self._lock:
            return list(self._seq)

    def check_writable(self) -> None:
        """Raise ReadOnlyMemoryError if this memory is frozen."""
        if self.read_only:
            raise ReadOnlyMemoryError(
                f"memory {'/'.join(self.namespace)} is read-only (frozen evaluation); open it "
                "with read_only=False to keep learning"
            )

    def _vector(self, vector: np.ndarray, what: str) -> np.ndarray:
        # The FAISS memory's checks (shape, finite, unit norm), so bad input fails the same way.
        return VectorMemory(self.dim)._matrix(vector, what)

    def _put(self, key: str, row: np.ndarray | None, encoded: str) -> None:
        old = self.store.get(self.namespace, key)
        if old is None and row is None:
            raise KeyError(f"key {key!r:.80} is not stored and no vector was given to add it")
        seq = int(old.value["seq"]) if old is not None else len(self._seq)
        vec = old.value["vec"] if old is not None else encode_vector(row)  # type: ignore[arg-type]
        self.store.put(self.namespace, key, {"vec": vec, "payload": encoded, "seq": seq})
        self._seq.setdefault(key, seq)

    def add(self, keys: Sequence[str], vectors: np.ndarray, payloads: Sequence[JSON]) -> None:
        """Append new entries; raise KeyError if a key is already stored."""
        self.check_writable()
        m = self._vector(vectors, "vectors")
        keys = list(keys)
        if not (len(keys) == m.shape[0] == len(payloads)) or len(set(keys)) != len(keys):
            raise ValueError("add() needs as many distinct keys as vectors and payloads")
        with self._lock:
            clash = [k for k in keys if k in self._seq or self.store.get(self.namespace, k)]
            if clash:
                raise KeyError(f"{len(clash)} key(s) already stored, e.g. {clash[0]!r:.80}")
            for key, row, payload in zip(keys, m, payloads, strict=True):
                self._put(key, row, _encode(payload))

    def upsert(self, key: str, vector: np.ndarray, payload: JSON) -> None:
        """Replace the payload of `key` (its vector is kept), or add the entry if `key` is new."""
        self.update(key, lambda _old: payload, vector=vector)

    def update(
        self, key: str, fn: Callable[[JSON | None], JSON], vector: np.ndarray | None = None
    ) -> JSON:
        """Set `key`'s payload to fn(old payload or None) and return it (one writer per memory)."""
        self.check_writable()
        row = None if vector is None else self._vector(vector, "vector")
        if row is not None and row.shape[0] != 1:
            raise ValueError(f"update() takes one vector, got {row.shape[0]}")
        with self._lock:
            new = fn(self.get(key))
            encoded = _encode(new)
            self._put(key, None if row is None else row[0], encoded)
            return json.loads(encoded)

    def get(self, key: str) -> JSON | None:
        """Return a copy of the payload stored under `key`, or None."""
        item = self.store.get(self.namespace, key)
        return None if item is None else json.loads(item.value["payload"])

    def search(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """Return, per query row, up to `k` entries by decreasing inner product (FAISS's scores)."""
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        q = self._vector(vectors, "query vectors")
        return [self._search_one(row, k) for row in q]

    def _search_one(self, row: np.ndarray, k: int) -> list[Hit]:
        """Rank the store's candidates exactly as FAISS's exact search ranks the same entries.

        Candidates are fetched until every entry that can reach the top k is among them (the
        k-th score is clear of the cut), then `faiss_top_k` replays faiss's choice among ties.
        """
        limit = k + _MARGIN
        while True:
            items = self.store.search(self.namespace, query=encode_vector(row), limit=limit)
            if not items:
                return []
            stored = np.asarray(decode_vectors([i.value["vec"] for i in items]), dtype=np.float32)
            index = faiss.IndexFlatIP(self.dim)
            index.add(stored)
            scores, rows = index.search(row[None, :], len(items))
            seqs = [int(i.value["seq"]) for i in items]
            pairs = [(float(sc), seqs[r], int(r)) for sc, r in zip(scores[0], rows[0], strict=True)]
            ranked = sorted(sc for sc, _, _ in pairs)
            kth = ranked[max(0, len(ranked) - k)]
            if len(items) < limit or ranked[0] < kth - _TIE_TOL:
                break
            limit *= 4  # the cut may fall inside a group of (near-)equal scores: widen
        return [
            Hit(
                key=items[r].key,
                payload=json.loads(items[r].value["payload"]),
                score=sc,
                sq_l2=max(0.0, 2.0 - 2.0 * sc),
            )
            for sc, _, r in faiss_top_k(pairs, k)
        ]

    def save(self, path: Path | str | None = None) -> Path:
        """Write `store.json` (namespace, meta, count): the entries are in the store already."""
        folder = Path(path) if path is not None else self.path
        if folder is None:
            raise ValueError("save() needs a path: none was given here or at construction")
        if path is None:
            self.check_writable()
        with self._lock:
            state = {
                "format": FORMAT,
                "namespace": list(self.namespace),
                "dim": self.dim,
                "count": len(self._seq),
                "meta": self.meta,
            }
            atomic_write_json(folder / STATE_FILE, state)
        return folder


class StoreBackend:
    """Open memories in `store` under `prefix`: what `memory.stores` calls instead of FAISS.

    Called like `VectorMemory(dim, meta=..., read_only=...)` for a memory with no folder, and
    `.load(folder, dim, read_only=...)` for a saved one, so the stores need no other change.
    """

    def __init__(self, store: BaseStore, prefix: Sequence[str]) -> None:
        self.store = store
        self.prefix = tuple(str(p).replace(".", "_") for p in prefix)  # Postgres joins with "."

    def __call__(
        self, dim: int, path: Path | str | None = None, *, meta=None, read_only: bool = False
    ) -> StoreVectorMemory:
        """Return an empty memory in a namespace of its own (nothing names it on disk)."""
        namespace = (*self.prefix, uuid.uuid4().hex, "memory")
        return StoreVectorMemory(self.store, namespace, dim, path, meta=meta, read_only=read_only)

    def load(
        self, path: Path | str, dim: int | None = None, *, read_only: bool = False
    ) -> StoreVectorMemory:
        """Open the memory whose `store.json` is in folder `path` (a fresh one if none)."""
        folder = Path(path)
        file = folder / STATE_FILE
        if not file.is_file():
            if dim is None:
                raise ValueError(f"{folder} holds no memory yet: pass dim to start an empty one")
            namespace = (*self.prefix, uuid.uuid4().hex, folder.name)
            memory = StoreVectorMemory(self.store, namespace, dim, folder, read_only=read_only)
            if len(memory):
                raise MemoryCorruptError(f"fresh namespace {namespace} is not empty")
            return memory
        try:
            state = json.loads(file.read_text(encoding="utf-8"))
            namespace, saved_dim, count = state["namespace"], state["dim"], state["count"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MemoryCorruptError(f"{file} does not parse ({exc}); restore a snapshot") from exc
        if dim is not None and dim != saved_dim:
            raise ValueError(
                f"memory at {folder} holds dim-{saved_dim} vectors but dim {dim} was asked for: "
                "it was built with other embeddings; use those, or a new folder"
            )
        meta = state.get("meta") if isinstance(state.get("meta"), dict) else {}
        memory = StoreVectorMemory(
            self.store, tuple(namespace), saved_dim, folder, meta=meta, read_only=read_only
        )
        if len(memory) < int(count):
            raise MemoryCorruptError(
                f"memory at {folder} names {count} entries in store namespace "
                f"{'/'.join(namespace)}, which holds {len(memory)}: the store lost them (an "
                f"in-memory store ends with its process; set {STORE_URI_ENV} to a Postgres "
                "database to keep memories between runs)"
            )
        return memory


_stores: dict[tuple[str, int], BaseStore] = {}
_stores_lock = threading.Lock()


def default_store(dim: int) -> BaseStore:
    """Return this process's store for `dim`-dim memories: Postgres at $BILLP_STORE_URI, else
    one InMemoryStore (tests, a single process).

    The Postgres connection is opened once and kept for the life of the process.
    """
    uri = os.environ.get(STORE_URI_ENV, "").strip()
    with _stores_lock:
        key = (uri, dim)
        if key not in _stores:
            if uri:
                taken = [d for u, d in _stores if u == uri]
                if taken:
                    raise ValueError(
                        f"the Postgres store at {STORE_URI_ENV} indexes dim-{taken[0]} vectors; "
                        f"dim-{dim} embeddings need another database"
                    )
                _stores[key] = open_postgres_store(uri, dim)
            else:
                from langgraph.store.memory import InMemoryStore

                _stores[key] = InMemoryStore(index=index_config(dim))  # type: ignore[arg-type]
        return _stores[key]


def server_store() -> BaseStore:
    """Return the store `langgraph.json` names for `langgraph dev` / LangGraph Server.

    The server's `runtime.store` is then the very store `memory_backend="store"` memories use
    (Postgres at $BILLP_STORE_URI, shared by every replica; else in memory), for embeddings of
    $BILLP_STORE_DIMS dimensions (default 384, MiniLM's).
    """
    return default_store(int(os.environ.get("BILLP_STORE_DIMS", "384")))


def open_postgres_store(uri: str, dim: int) -> BaseStore:
    """Open (and create the tables of) a PostgresStore with an exact pgvector cosine search."""
    try:
        from langgraph.store.postgres import PostgresStore
        from psycopg import Connection
        from psycopg.rows import dict_row
    except ImportError as exc:
        raise ValueError(
            f"{STORE_URI_ENV} needs langgraph-checkpoint-postgres (pip install -e '.[store]')"
        ) from exc
    conn = Connection.connect(uri, autocommit=True, prepare_threshold=0, row_factory=dict_row)
    config = {**index_config(dim), "ann_index_config": {"kind": "flat"}}
    store = PostgresStore(conn, index=config)  # type: ignore[arg-type]
    store.setup()
    return store


def clear_stores() -> None:
    """Forget the process's stores (tests: a fresh process; an InMemoryStore's data is lost)."""
    with _stores_lock:
        _stores.clear()
