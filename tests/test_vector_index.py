"""VectorMemory's switch from exact to approximate (IVF) search above its size threshold."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from memory.vector import (
    APPROX_MIN_ENTRIES,
    INDEX_FILE,
    MemoryCorruptError,
    VectorMemory,
    build_index,
    ivf_lists,
)

DIM = 32
THRESHOLD = 1000  # small stand-in for APPROX_MIN_ENTRIES, so k-means runs in milliseconds


def _clustered(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 40 centres: the structure IVF relies on, as real embeddings have."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, DIM)).astype(np.float32)
    m = centres[rng.integers(0, 40, n)] + 0.5 * rng.standard_normal((n, DIM)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def _memory(n: int, threshold: int = THRESHOLD) -> tuple[VectorMemory, np.ndarray]:
    vecs = _clustered(n)
    mem = VectorMemory(DIM, approx_min_entries=threshold)
    mem.add([f"k{i}" for i in range(n)], vecs, [{"i": i} for i in range(n)])
    return mem, vecs


def _finds_itself(mem: VectorMemory, vecs: np.ndarray, rows: range | list[int]) -> None:
    for i, hits in zip(rows, mem.search(vecs[list(rows)], 2), strict=True):
        assert hits[0].key == f"k{i}" and hits[0].payload == {"i": i} and hits[0].sq_l2 < 1e-5


def test_below_the_threshold_search_stays_exact() -> None:
    assert VectorMemory(DIM).approx_min_entries == APPROX_MIN_ENTRIES
    mem, vecs = _memory(THRESHOLD - 1)
    assert mem.index_kind == "Flat"
    q = _clustered(20, seed=1)
    exact = np.argsort(-(q @ vecs.T), axis=1)[:, :3]
    assert [[h.key for h in hits] for hits in mem.search(q, 3)] == [
        [f"k{i}" for i in row] for row in exact
    ]


def test_crossing_the_threshold_switches_to_ivf_and_keeps_finding_stored_keys() -> None:
    mem, vecs = _memory(THRESHOLD - 1)
    extra = _clustered(THRESHOLD + 1, seed=2)[-1]
    mem.update(f"k{THRESHOLD - 1}", lambda _old: {"i": THRESHOLD - 1}, vector=extra)
    assert mem.index_kind.startswith(f"IVF{ivf_lists(THRESHOLD)},Flat/")
    vecs = np.vstack([vecs, extra])
    _finds_itself(mem, vecs, range(0, THRESHOLD, 7))
    q = _clustered(200, seed=3)
    exact = np.argmax(q @ vecs.T, axis=1)
    found = [int(hits[0].key[1:]) for hits in mem.search(q, 1)]
    assert np.mean(found == exact) > 0.9  # approximate, but close on clustered data


def test_growth_retrains_with_more_lists_and_incremental_adds_are_found() -> None:
    mem, vecs = _memory(THRESHOLD)
    first = mem.index_kind
    more = _clustered(3 * THRESHOLD, seed=4)
    for i in range(THRESHOLD, 3 * THRESHOLD, 250):  # batches, as episodes add them
        mem.add(
            [f"k{j}" for j in range(i, i + 250)],
            more[i : i + 250],
            [{"i": j} for j in range(i, i + 250)],
        )
    assert mem.index_kind == f"IVF{ivf_lists(3 * THRESHOLD)},Flat/16" != first
    all_vecs = np.vstack([vecs, more[THRESHOLD:]])
    _finds_itself(mem, all_vecs, range(0, 3 * THRESHOLD, 11))
    assert mem.snapshot().index_kind == mem.index_kind


def test_save_load_keeps_the_approximate_index_and_its_results(tmp_path: Path) -> None:
    mem, vecs = _memory(2 * THRESHOLD)
    mem.save(tmp_path / "m")
    back = VectorMemory.load(tmp_path / "m", DIM, approx_min_entries=THRESHOLD)
    assert back.index_kind == mem.index_kind and back.index_kind.startswith("IVF")
    q = _clustered(50, seed=5)
    assert back.search(q, 10) == mem.search(q, 10)
    back.add(["new"], q[:1], [{"i": -1}])
    assert back.search(q[:1], 1)[0][0].key == "new"
    # Under the default threshold the same files open as an exact memory again.
    exact = VectorMemory.load(tmp_path / "m", DIM)
    assert exact.index_kind == "Flat"
    best = np.argmax(q @ vecs.T, axis=1)
    assert [hits[0].key for hits in exact.search(q, 1)] == [f"k{i}" for i in best]


def test_a_damaged_ivf_index_is_refused(tmp_path: Path) -> None:
    mem, _ = _memory(2 * THRESHOLD)
    folder = mem.save(tmp_path / "m")
    (folder / INDEX_FILE).write_bytes((folder / INDEX_FILE).read_bytes()[:-100])
    with pytest.raises(MemoryCorruptError, match="does not match the sha256"):
        VectorMemory.load(folder, DIM, approx_min_entries=THRESHOLD)


def test_threads_crossing_the_threshold_lose_nothing() -> None:
    vecs = _clustered(2 * THRESHOLD)
    mem = VectorMemory(DIM, approx_min_entries=THRESHOLD)

    def writer(start: int) -> None:
        for i in range(start, 2 * THRESHOLD, 4):
            mem.add([f"k{i}"], vecs[i], [{"i": i}])
            if i % 97 == 0:
                mem.search(vecs[i], 2)

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(mem) == 2 * THRESHOLD and mem.index_kind.startswith("IVF")
    assert set(mem.keys()) == {f"k{i}" for i in range(2 * THRESHOLD)}
    _finds_itself(mem, vecs, range(0, 2 * THRESHOLD, 13))


def test_build_index_follows_the_threshold() -> None:
    vecs = _clustered(1200)
    assert isinstance(
        build_index(vecs, DIM, approx_min_entries=1201), type(VectorMemory(DIM)._index)
    )
    ivf = build_index(vecs, DIM, approx_min_entries=1200)
    assert ivf.ntotal == 1200 and ivf.nlist == ivf_lists(1200)
    assert [ivf_lists(n) for n in (20_000, 100_000, 1_000_000)] == [256, 512, 1024]
