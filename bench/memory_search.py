"""Time single-query memory search at 1k, 10k, 100k and 1M entries, with recall vs exact search.

python -m bench.memory_search [--quick] [--out PATH]

One `VectorMemory` grows from empty to each size through its public `add()` (so the index is
the one the memories really hold: exact below `APPROX_MIN_ENTRIES`, IVF-Flat above, re-trained
as it grows). At each size it times `search(query, k=2)` one query at a time, as the macro
store does (the actor and critic use k=1), and compares top-k against exact brute force.

Data: 384-dim unit vectors shaped like sentence embeddings: a mixture of 4096 Gaussian topics
(Zipf-like popularity), each point = topic centre + noise in an 8-dim topic-specific subspace
(embeddings have low intrinsic dimension) + small isotropic noise, normalized. The nearest
neighbour of a query then has cosine ~0.8 and the 10th ~0.7. Queries come from the same
distribution but are not stored keys. Fixed seeds.
"""

from __future__ import annotations

import time
from typing import Any

import faiss
import numpy as np

from bench.common import main as cli
from memory.vector import APPROX_MIN_ENTRIES, NPROBE, VectorMemory

DIM = 384
CENTRES = 4096
RANK = 8  # dimension of each topic's own noise subspace
LOCAL_SCALE = 0.7  # norm of the in-subspace noise, relative to the unit centre
ISO_SCALE = 0.35  # norm of the isotropic noise
SIZES = (1_000, 10_000, 100_000, 1_000_000)
K = 2  # MacroMemory.retrieve's k; recall is also reported at 1 and 10
CHUNK = 50_000  # rows generated / added at a time: bounds temporaries to ~100 MB


class Embeddings:
    """Draw sentence-embedding-like unit vectors from one fixed topic mixture."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.centres = _normalized(rng.standard_normal((CENTRES, DIM), dtype=np.float32))
        self.directions = _normalized(rng.standard_normal((1024, DIM), dtype=np.float32))
        self.subspace = rng.integers(0, len(self.directions), size=(CENTRES, RANK))
        weights = 1.0 / np.arange(1, CENTRES + 1) ** 0.5
        self.weights = weights / weights.sum()

    def fill(self, out: np.ndarray, seed: int) -> np.ndarray:
        """Fill `out` [n, DIM] in place, chunk by chunk (no full-size temporaries)."""
        rng = np.random.default_rng(seed)
        for a in range(0, len(out), CHUNK):
            m = min(len(out), a + CHUNK) - a
            topic = rng.choice(CENTRES, size=m, p=self.weights)
            x = rng.standard_normal((m, DIM), dtype=np.float32)
            x *= ISO_SCALE / np.sqrt(DIM)
            x += self.centres[topic]
            z = rng.standard_normal((m, RANK), dtype=np.float32) * (LOCAL_SCALE / np.sqrt(RANK))
            for j in range(RANK):
                x += z[:, j : j + 1] * self.directions[self.subspace[topic, j]]
            out[a : a + m] = _normalized(x)
        return out


def _normalized(m: np.ndarray) -> np.ndarray:
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    return m


def _percentiles_ms(seconds: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(seconds) * 1e3, [50, 99])
    return round(float(p50), 4), round(float(p99), 4)


def _time_memory(mem: VectorMemory, queries: np.ndarray, warmup: int) -> list[float]:
    for q in queries[:warmup]:
        mem.search(q, K)
    out = []
    for q in queries[warmup:]:
        started = time.perf_counter()
        mem.search(q, K)
        out.append(time.perf_counter() - started)
    return out


def _time_exact(base: np.ndarray, queries: np.ndarray) -> list[float]:
    """Single-query brute force over `base` (the IndexFlatIP scan, without copying `base`)."""
    faiss.knn(queries[:1], base, K, metric=faiss.METRIC_INNER_PRODUCT)
    out = []
    for q in queries:
        started = time.perf_counter()
        faiss.knn(q[None, :], base, K, metric=faiss.METRIC_INNER_PRODUCT)
        out.append(time.perf_counter() - started)
    return out


def _recall(mem: VectorMemory, base: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    _, truth = faiss.knn(queries, base, 10, metric=faiss.METRIC_INNER_PRODUCT)
    found = [[int(h.key[1:]) for h in hits] for hits in mem.search(queries, 10)]
    out = {}
    for k in (1, K, 10):
        hit = sum(len(set(f[:k]) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True))
        out[f"recall_at_{k}"] = round(hit / (k * len(queries)), 4)
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Grow one memory through the sizes and return latency, build time and recall per size."""
    started = time.perf_counter()
    sizes = SIZES[:3] if quick else SIZES
    n_queries, warmup = (500, 50) if quick else (1000, 100)
    faiss.omp_set_num_threads(2)  # builds and batch ground truth may use both cores
    data = Embeddings(seed=0)
    base = data.fill(np.empty((sizes[-1], DIM), dtype=np.float32), seed=1)
    queries = data.fill(np.empty((warmup + n_queries, DIM), dtype=np.float32), seed=2)
    gen_s = time.perf_counter() - started

    mem = VectorMemory(DIM)
    details: dict[str, Any] = {}
    grow_s = 0.0
    for n in sizes:
        t0 = time.perf_counter()
        for a in range(len(mem), n, CHUNK):
            b = min(n, a + CHUNK)
            keys = [f"s{i}" for i in range(a, b)]
            mem.add(keys, base[a:b], [{"value": float(i % 7)} for i in range(a, b)])
        grow_s += time.perf_counter() - t0
        faiss.omp_set_num_threads(1)
        lat = _time_memory(mem, queries, warmup)
        exact_q = queries[warmup : warmup + (20 if n >= 1_000_000 else 200)]
        exact = _time_exact(base[:n], exact_q) if mem.index_kind != "Flat" else lat
        faiss.omp_set_num_threads(2)
        p50, p99 = _percentiles_ms(lat)
        details[str(n)] = {
            "index_kind": mem.index_kind,
            "nlist": getattr(mem._index, "nlist", None),
            "nprobe": getattr(mem._index, "nprobe", None),
            "build_s": round(grow_s, 2),
            "p50_ms": p50,
            "p99_ms": p99,
            "exact_p50_ms": _percentiles_ms(exact)[0],
            "exact_timed_queries": len(exact),
            **_recall(mem, base[:n], queries[warmup:]),
        }
    p50s = {str(n): details.get(str(n), {}).get("p50_ms") for n in SIZES}
    p99s = {str(n): details.get(str(n), {}).get("p99_ms") for n in SIZES}
    return {
        "memory_search_p50_ms": p50s,
        "memory_search_p99_ms": p99s,
        "memory_search": {
            "sizes": details,
            "k": K,
            "threshold_approx_min_entries": APPROX_MIN_ENTRIES,
            "nprobe": NPROBE,
            "timed_queries": n_queries,
            "warmup_queries": warmup,
            "faiss_threads_search": 1,
            "faiss_threads_build": 2,
            "note": (
                "latency is VectorMemory.search(one query, k=2) incl. validation and payload "
                "decoding; single queries always run on 1 OpenMP thread (VectorMemory forces "
                "it), so a 2-thread figure would be identical; build_s is cumulative growth "
                "from empty by add() in 50k batches, incl. the IVF (re)trainings; exact_p50_ms "
                "is a single-query brute-force scan (= p50_ms where the index is Flat)"
            ),
            "data": (
                f"{DIM}-dim unit vectors: {CENTRES} Gaussian topics (Zipf^0.5 popularity), "
                f"centre + {LOCAL_SCALE}-norm noise in a {RANK}-dim topic subspace + "
                f"{ISO_SCALE}-norm isotropic noise, normalized; queries from the same mixture, "
                "not stored; seeds 0/1/2"
            ),
            "generate_s": round(gen_s, 2),
            "quick": quick,
            "total_s": round(time.perf_counter() - started, 1),
        },
    }


if __name__ == "__main__":
    cli(run, __doc__)
