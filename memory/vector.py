"""Keep keyed JSON payloads findable by vector similarity, on disk, safe under concurrency.

A `VectorMemory` is a faiss inner-product index over unit vectors, row-aligned with Python lists
of keys and payloads. It grows incrementally (nothing is ever re-embedded), saves as
`index.faiss` + `entries.json` with a checksum tying the two together, and refuses to load a
pair that does not match instead of silently serving wrong neighbours.

Below `APPROX_MIN_ENTRIES` entries the index is an exact `IndexFlatIP` (BiLLP's memories live
here, so their results are exact and reproducible). A flat scan costs ~0.1 ms per 1k entries on
one core, ~10 ms at 100k, so from the threshold on `build_index` switches to IVF-Flat
(`ivf_lists(n)` lists, `NPROBE` probed): ~0.5 ms at 100k with recall@2 ~0.97 on clustered
384-dim data (see bench/memory_search.py). The lists are re-trained on all vectors each time
the size grows ~4x (whenever `ivf_lists` doubles). A stored vector still finds itself: it lives
in the list of its nearest centroid, which is the first of the lists its own query probes.
"""

from __future__ import annotations

import copy
import json
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import faiss
import numpy as np

from storage.files import atomic_write_bytes, sha256_bytes

JSON: TypeAlias = dict[str, "JSON"] | list["JSON"] | str | int | float | bool | None

INDEX_FILE = "index.faiss"
ENTRIES_FILE = "entries.json"
FORMAT = "billp.vector_memory/1"
_UNIT_TOL = 1e-3  # float32 embeddings are unit-norm to ~1e-6; this only catches real mistakes
# Below this many queries, one OpenMP thread is fastest: waking workers costs more than the scan
# (measured 10x slower on a busy 2-core machine, where waiting workers fight for the cores).
_SERIAL_QUERIES = 20
# From this many entries on, search is approximate (IVF-Flat); below it, exact (IndexFlatIP).
# Flat p50 is ~1-2 ms here on one core; the one-off k-means at the switch takes about 1 s.
APPROX_MIN_ENTRIES = 20_000
# Lists probed per query: at 100k entries (512 lists) p50 ~0.5 ms, recall@2 ~0.97; a sweep gave
# 8 -> ~0.25 ms / -0.01 recall, 32 -> ~0.8 ms / +0.01 (bench/memory_search.py data).
NPROBE = 16
_TRAIN_ITERS = 10  # k-means iterations; more barely moves recall and costs build time
_TRAIN_POINTS_PER_LIST = 64  # k-means sample cap per list: bounds retraining at 1M to seconds
_MIN_POINTS_PER_LIST = 39  # faiss warns below this many training points per centroid


def ivf_lists(n: int) -> int:
    """Return the IVF list count for `n` vectors: the power of two at or below 2*sqrt(n).

    A power of two makes re-training stateless: the count doubles exactly when `n` grows 4x.
    """
    target = min(2.0 * math.sqrt(n), n / _MIN_POINTS_PER_LIST)
    return 1 << max(0, int(math.log2(max(target, 1.0))))


def build_index(
    vectors: np.ndarray, dim: int, approx_min_entries: int = APPROX_MIN_ENTRIES
) -> faiss.Index:
    """Return the index `VectorMemory` uses for these unit `vectors` [n, dim], filled.

    Exact `IndexFlatIP` below `approx_min_entries`, else IVF-Flat trained on `vectors` (faiss
    seeds its k-means). bench/memory_search.py calls it, so it times what the memories run.
    """
    n = len(vectors)
    if n < approx_min_entries:
        index = faiss.IndexFlatIP(dim)
    else:
        nlist = ivf_lists(n)
        index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = _TRAIN_ITERS
        index.cp.max_points_per_centroid = _TRAIN_POINTS_PER_LIST
        index.nprobe = min(NPROBE, nlist)
        index.train(vectors)
    index.add(vectors)
    return index


def index_kind(index: faiss.Index) -> str:
    """Name `index` as a faiss factory string plus nprobe, e.g. 'Flat' or 'IVF512,Flat/16'."""
    if isinstance(index, faiss.IndexIVF):
        return f"IVF{index.nlist},Flat/{index.nprobe}"
    return "Flat"


@contextmanager
def _omp_threads(n: int) -> Iterator[None]:
    """Limit faiss's OpenMP threads for the calling thread only (the setting is per thread)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class MemoryCorruptError(ValueError):
    """The files of a saved memory are missing, truncated or do not match each other."""


class ReadOnlyMemoryError(RuntimeError):
    """A write was attempted on a memory frozen for evaluation."""


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result: the stored key and payload, inner product and squared L2 distance."""

    key: str
    payload: JSON
    score: float
    sq_l2: float


def _encode(payload: JSON) -> str:
    try:
        # allow_nan=False: NaN would save as invalid JSON and break the next load.
        return json.dumps(payload, ensure_ascii=False, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"payload is not plain JSON ({exc}): {payload!r:.200}") from exc


def _entries_json(head: dict[str, JSON], keys: list[str], payloads: list[str]) -> bytes:
    """Return the entries file: `head`'s fields, then one key and one payload per line.

    Payloads are kept encoded and spliced in as they are: decoding, re-encoding and pretty-
    printing them made each save cost ~25 ms at 800 entries, paid at every episode's end."""
    try:
        return _entries_text(head, keys, payloads, ascii_only=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate in some text: write every string escaped
        escaped = [json.dumps(json.loads(p), sort_keys=True) for p in payloads]
        return _entries_text(head, keys, escaped, ascii_only=True).encode("ascii")


def _entries_text(
    head: dict[str, JSON], keys: list[str], payloads: list[str], *, ascii_only: bool
) -> str:
    fields = [f"{json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(head.items())]
    fields.append('"keys": ' + json.dumps(keys, ensure_ascii=ascii_only, separators=(",\n", ": ")))
    fields.append('"payloads": [\n' + ",\n".join(payloads) + "\n]")
    return "{\n" + ",\n".join(fields) + "\n}\n"


class VectorMemory:
    """Store (key, unit vector, JSON payload) entries and find the nearest ones.

    Keys are unique. Every public method holds one re-entrant lock, so episodes running in
    threads or in one event loop can share a memory. Payloads are kept as JSON text, so what a
    caller reads can never alias what is stored. The constructor starts empty (`path` is only
    where `save()` writes); `VectorMemory.load(path, dim)` opens a saved one.
    `approx_min_entries` moves the exact/approximate switch (tests use a small one).
    """

    def __init__(
        self,
        dim: int,
        path: Path | str | None = None,
        *,
        meta: dict[str, JSON] | None = None,
        read_only: bool = False,
        approx_min_entries: int = APPROX_MIN_ENTRIES,
    ) -> None:
        if dim <= 0 or approx_min_entries <= 0:
            raise ValueError(
                f"dim and approx_min_entries must be positive, got {dim}, {approx_min_entries}"
            )
        self.dim = dim
        self.path = Path(path) if path is not None else None
        self.meta: dict[str, JSON] = dict(meta or {})
        self.read_only = read_only
        self.approx_min_entries = approx_min_entries
        self._index: faiss.Index = faiss.IndexFlatIP(dim)
        self._keys: list[str] = []
        self._payloads: list[str] = []
        self._rows: dict[str, int] = {}
        self._lock = threading.RLock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._rows

    @property
    def index_kind(self) -> str:
        """The faiss index now in use: 'Flat' (exact) or e.g. 'IVF512,Flat/16' (approximate)."""
        with self._lock:
            return index_kind(self._index)

    def _fit_index(self) -> None:
        """Rebuild the index when the size crossed the threshold or grew ~4x since training."""
        n = self._index.ntotal
        want = 0 if n < self.approx_min_entries else ivf_lists(n)
        have = self._index.nlist if isinstance(self._index, faiss.IndexIVF) else 0
        if (want == 0) != (have == 0) or (have and want >= 2 * have):
            vectors = self._index.reconstruct_n(0, n)
            self._index = build_index(vectors, self.dim, self.approx_min_entries)

    def keys(self) -> list[str]:
        """Return the keys in insertion order."""
        with self._lock:
            return list(self._keys)

    def check_writable(self) -> None:
        """Raise ReadOnlyMemoryError if this memory is frozen (lets callers fail before work)."""
        if self.read_only:
            where = f" at {self.path}" if self.path else ""
            raise ReadOnlyMemoryError(
                f"memory{where} is read-only (frozen evaluation); open it with read_only=False "
                "to keep learning"
            )

    def _matrix(self, vectors: np.ndarray, what: str) -> np.ndarray:
        m = np.asarray(vectors, dtype=np.float32)
        if m.ndim == 1:
            m = m[None, :]
        if m.ndim != 2 or m.shape[1] != self.dim:
            raise ValueError(
                f"{what} must have shape [n, {self.dim}] or [{self.dim}], got {m.shape}"
            )
        norms = np.sqrt(np.einsum("ij,ij->i", m, m))
        if (np.abs(norms - 1.0) <= _UNIT_TOL).all():  # one pass: NaN and inf fail it too
            return np.ascontiguousarray(m)
        if not np.isfinite(m).all():
            raise ValueError(f"{what} contain NaN or inf")
        raise ValueError(  # an empty matrix passed above: there is a row to report
            f"{what} must be L2-normalized rows (norms range {norms.min():.4f}..{norms.max():.4f})"
        )

    def add(self, keys: Sequence[str], vectors: np.ndarray, payloads: Sequence[JSON]) -> None:
        """Append new entries; raise KeyError if a key is already stored (use upsert to replace)."""
        self.check_writable()
        keys = list(keys)
        m = self._matrix(vectors, "vectors")
        if not (len(keys) == m.shape[0] == len(payloads)):
            raise ValueError(
                f"add() got {len(keys)} keys, {m.shape[0]} vectors and {len(payloads)} payloads"
            )
        encoded = [_encode(p) for p in payloads]
        for key in keys:
            if not isinstance(key, str):
                raise TypeError(f"keys must be str, got {type(key).__name__}")
        if len(set(keys)) != len(keys):
            raise KeyError("add() got the same key twice in one batch")
        with self._lock:
            self.check_writable()
            clash = [k for k in keys if k in self._rows]
            if clash:
                raise KeyError(f"{len(clash)} key(s) already stored, e.g. {clash[0]!r:.80}")
            for key in keys:
                self._rows[key] = len(self._keys)
                self._keys.append(key)
            self._payloads.extend(encoded)
            self._index.add(m)
            self._fit_index()

    def upsert(self, key: str, vector: np.ndarray, payload: JSON) -> None:
        """Replace the payload of `key` (its vector is kept), or add the entry if `key` is new."""
        self.update(key, lambda _old: payload, vector=vector)

    def update(
        self, key: str, fn: Callable[[JSON | None], JSON], vector: np.ndarray | None = None
    ) -> JSON:
        """Atomically set `key`'s payload to fn(old payload or None) and return it.

        Read-modify-write under the lock, so concurrent updates of one key never lose each
        other's changes. `vector` is needed only when `key` is new.
        """
        self.check_writable()
        m = None if vector is None else self._matrix(vector, "vector")
        if m is not None and m.shape[0] != 1:
            raise ValueError(f"update() takes one vector, got {m.shape[0]}")
        with self._lock:
            self.check_writable()
            row = self._rows.get(key)
            old = None if row is None else json.loads(self._payloads[row])
            new = fn(old)
            encoded = _encode(new)
            if row is not None:
                self._payloads[row] = encoded
            elif m is None:
                raise KeyError(f"key {key!r:.80} is not stored and no vector was given to add it")
            else:
                self._rows[key] = len(self._keys)
                self._keys.append(key)
                self._payloads.append(encoded)
                self._index.add(m)
                self._fit_index()
            return json.loads(encoded)

    def get(self, key: str) -> JSON | None:
        """Return a copy of the payload stored under `key`, or None."""
        with self._lock:
            row = self._rows.get(key)
            return None if row is None else json.loads(self._payloads[row])

    def search(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """Return, for each query row, up to `k` entries by decreasing inner product."""
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        q = self._matrix(vectors, "query vectors")
        with self._lock:
            kk = min(k, len(self._keys))
            if kk == 0:
                return [[] for _ in range(q.shape[0])]
            if q.shape[0] < _SERIAL_QUERIES:
                with _omp_threads(1):
                    scores, rows = self._index.search(q, kk)
            else:
                scores, rows = self._index.search(q, kk)
            return [
                [
                    Hit(
                        key=self._keys[r],
                        payload=json.loads(self._payloads[r]),
                        score=float(s),
                        sq_l2=max(0.0, 2.0 - 2.0 * float(s)),
                    )
                    for s, r in zip(srow, rrow, strict=True)
                    if r >= 0
                ]
                for srow, rrow in zip(scores, rows, strict=True)
            ]

    def snapshot(self) -> VectorMemory:
        """Return a read-only, in-memory copy: frozen evaluation cannot touch the original."""
        with self._lock:
            meta, thr = copy.deepcopy(self.meta), self.approx_min_entries
            twin = VectorMemory(self.dim, None, meta=meta, read_only=True, approx_min_entries=thr)
            twin._index = faiss.clone_index(self._index)
            twin._keys = list(self._keys)
            twin._payloads = list(self._payloads)
            twin._rows = dict(self._rows)
            return twin

    def save(self, path: Path | str | None = None) -> Path:
        """Write `index.faiss` then `entries.json` atomically to `path` (default: self.path).

        Each file is written to a temp name, fsynced and renamed; the JSON, which carries the
        index's sha256, goes last, so a crash leaves the old pair or a mismatch that load()
        reports, never a silently wrong memory. A read-only memory may be exported to an
        explicit `path` but never written back over its own folder. Returns the folder written.
        """
        folder = Path(path) if path is not None else self.path
        if folder is None:
            raise ValueError("save() needs a path: none was given here or at construction")
        if path is None:
            self.check_writable()
        with self._lock:
            data = bytes(faiss.serialize_index(self._index))
            head = {
                "format": FORMAT,
                "dim": self.dim,
                "count": len(self._keys),
                "index_sha256": sha256_bytes(data),
                "meta": self.meta,
            }
            entries = _entries_json(head, self._keys, self._payloads)
            atomic_write_bytes(folder / INDEX_FILE, data)
            atomic_write_bytes(folder / ENTRIES_FILE, entries)
        return folder

    @classmethod
    def load(
        cls,
        path: Path | str,
        dim: int | None = None,
        *,
        read_only: bool = False,
        approx_min_entries: int = APPROX_MIN_ENTRIES,
    ) -> VectorMemory:
        """Open the memory saved in folder `path`; a missing or empty folder gives an empty one.

        An index that does not suit the size under `approx_min_entries` is rebuilt in memory.
        Raises MemoryCorruptError when the files are incomplete or inconsistent, and ValueError
        when `dim` is given and differs from the saved one.
        """
        folder = Path(path)
        index_path, entries_path = folder / INDEX_FILE, folder / ENTRIES_FILE
        if not index_path.exists() and not entries_path.exists():
            if dim is None:
                raise ValueError(f"{folder} holds no memory yet: pass dim to start an empty one")
            return cls(dim, folder, read_only=read_only, approx_min_entries=approx_min_entries)

        def corrupt(what: str) -> MemoryCorruptError:
            return MemoryCorruptError(
                f"memory at {folder} is corrupt: {what}. It cannot be trusted; restore the "
                "folder from a snapshot or backup, or delete it to start with an empty memory"
            )

        for p in (index_path, entries_path):
            if not p.exists():
                raise corrupt(f"{p.name} is missing")
        try:
            entries = json.loads(entries_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise corrupt(f"{ENTRIES_FILE} does not parse ({exc})") from exc
        if not isinstance(entries, dict) or entries.get("format") != FORMAT:
            raise corrupt(f"{ENTRIES_FILE} is not a {FORMAT} file")
        data = index_path.read_bytes()
        if sha256_bytes(data) != entries.get("index_sha256"):
            raise corrupt(f"{INDEX_FILE} does not match the sha256 in {ENTRIES_FILE}")
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as exc:
            raise corrupt(f"{INDEX_FILE} does not parse ({exc})") from exc
        keys, payloads, count = entries.get("keys"), entries.get("payloads"), entries.get("count")
        saved_dim = entries.get("dim")
        if not isinstance(keys, list) or not isinstance(payloads, list):
            raise corrupt(f"{ENTRIES_FILE} lacks its keys or payloads list")
        if not (count == len(keys) == len(payloads) == index.ntotal):
            raise corrupt(
                f"count {count}, {len(keys)} keys, {len(payloads)} payloads and "
                f"{index.ntotal} vectors disagree"
            )
        ivf_ip = isinstance(index, faiss.IndexIVFFlat) and index.is_trained
        ivf_ip = ivf_ip and index.metric_type == faiss.METRIC_INNER_PRODUCT
        if saved_dim != index.d or not (isinstance(index, faiss.IndexFlatIP) or ivf_ip):
            raise corrupt(f"{INDEX_FILE} is not a dim-{saved_dim} inner-product index")
        if len(set(keys)) != len(keys) or not all(isinstance(k, str) for k in keys):
            raise corrupt(f"{ENTRIES_FILE} has duplicate or non-text keys")
        if dim is not None and dim != saved_dim:
            raise ValueError(
                f"memory at {folder} holds dim-{saved_dim} vectors but dim {dim} was asked for: "
                "it was built with other embeddings; use those, or a new folder"
            )
        meta = entries.get("meta")
        meta = meta if isinstance(meta, dict) else {}
        memory = cls(saved_dim, folder, meta=meta, approx_min_entries=approx_min_entries)
        if ivf_ip:
            index.nprobe = min(NPROBE, index.nlist)
        memory._index = index
        memory._fit_index()
        memory._keys = keys
        memory._payloads = [_encode(p) for p in payloads]
        memory._rows = {k: i for i, k in enumerate(keys)}
        memory.read_only = read_only
        return memory
