"""Memories in a LangGraph store (InMemoryStore here; tests/test_postgres_store.py: Postgres).

The store backend must answer exactly as the FAISS one: same hits, bit-identical distances (the
hint thresholds compare them), same episodes when a whole BiLLP run learns and is tested on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from langgraph.store.memory import InMemoryStore

from eval.experiment import Experiment
from eval.protocol import RunConfig
from memory.embeddings import make_embeddings
from memory.store_backend import (
    STATE_FILE,
    StoreBackend,
    StoreVectorMemory,
    clear_stores,
    decode_vectors,
    encode_vector,
    faiss_top_k,
    index_config,
)
from memory.stores import ActorMemory, MacroMemory
from memory.vector import MemoryCorruptError, ReadOnlyMemoryError, VectorMemory
from nodes.resources import clear_cache

DIM = 16


def _unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _store() -> InMemoryStore:
    return InMemoryStore(index=index_config(DIM))  # type: ignore[arg-type]


def test_store_vectors_round_trip_exactly():
    v = _unit(3, 0)
    back = np.asarray(decode_vectors([encode_vector(r) for r in v]), dtype=np.float32)
    assert np.array_equal(back, v)


def test_store_ranking_replays_faiss_choice_among_ties():
    """Many equal scores, any k: the same rows in the same order as faiss's exact index."""
    import faiss

    rng = np.random.default_rng(0)
    for _ in range(200):
        n, k = int(rng.integers(1, 30)), int(rng.integers(1, 8))
        cos = rng.integers(0, 4, size=n).astype(np.float32) / 4  # few distinct scores
        x = np.zeros((n, 4), np.float32)
        x[:, 0], x[:, 1] = cos, np.sqrt(1 - cos**2)
        index = faiss.IndexFlatIP(4)
        index.add(x)
        query = np.array([[1, 0, 0, 0]], np.float32)
        _, rows = index.search(query, k)
        scores = (x @ query[0]).astype(np.float32)
        ours = faiss_top_k([(float(sc), i, None) for i, sc in enumerate(scores)], k)
        assert [p[1] for p in ours] == [int(r) for r in rows[0] if r >= 0]


def test_store_memory_answers_exactly_as_faiss():
    faiss_mem, store_mem = VectorMemory(DIM), StoreVectorMemory(_store(), ("t", "m"), DIM)
    vectors = _unit(150, 1)
    for i, v in enumerate(vectors):
        for mem in (faiss_mem, store_mem):
            mem.upsert(f"k{i}", v, {"i": i, "z": [1, 2]})
    # Read-modify-write of an existing key keeps its vector and sees the old payload.
    for mem in (faiss_mem, store_mem):
        mem.update("k3", lambda old: {**old, "seen": True})
    queries = np.concatenate([_unit(25, 2), vectors[:5]])  # exact matches: distance 0
    assert store_mem.search(queries, 4) == faiss_mem.search(queries, 4)
    assert len(store_mem) == len(faiss_mem) == 150
    assert "k3" in store_mem and "nope" not in store_mem
    assert store_mem.get("k3") == faiss_mem.get("k3") == {"i": 3, "z": [1, 2], "seen": True}
    assert store_mem.keys() == faiss_mem.keys()
    with pytest.raises(KeyError, match="no vector"):
        store_mem.update("new", lambda old: 1)
    with pytest.raises(ValueError, match="L2-normalized"):
        store_mem.upsert("bad", vectors[0] * 2, {})


def test_store_memory_reopens_from_its_folder_and_refuses_a_lost_store(tmp_path: Path):
    store = _store()
    backend = StoreBackend(store, ("billp", "synthetic", "billp", "seed-0"))
    mem = backend.load(tmp_path / "actor", DIM)
    mem.upsert("a", _unit(1, 3)[0], {"x": 1})
    mem.meta["observed"] = [0.5]
    mem.save()
    state = json.loads((tmp_path / "actor" / STATE_FILE).read_text())
    assert state["namespace"][:4] == ["billp", "synthetic", "billp", "seed-0"]
    assert state["namespace"][-1] == "actor" and state["count"] == 1
    back = backend.load(tmp_path / "actor", DIM, read_only=True)
    assert back.keys() == ["a"] and back.meta == {"observed": [0.5]}
    with pytest.raises(ReadOnlyMemoryError):
        back.upsert("b", _unit(1, 4)[0], {})
    with pytest.raises(ValueError, match="dim 8"):
        backend.load(tmp_path / "actor", 8)
    # Another process's in-memory store never held these entries: refused, not served empty.
    with pytest.raises(MemoryCorruptError, match="lost"):
        StoreBackend(_store(), ("billp",)).load(tmp_path / "actor", DIM)
    # A fresh folder is a fresh namespace, even in the same store.
    assert len(backend.load(tmp_path / "other" / "actor", DIM)) == 0


def test_store_backed_billp_stores_match_faiss_ones(tmp_path: Path):
    emb = make_embeddings("hashing")
    backend = StoreBackend(InMemoryStore(index=index_config(emb.dim)), ("billp", "t"))  # type: ignore[arg-type]
    f, s = tmp_path / "faiss", tmp_path / "store"
    pairs = [
        (MacroMemory(emb, f / "macro"), MacroMemory(emb, s / "macro", backend=backend)),
        (ActorMemory(emb, f / "actor"), ActorMemory(emb, s / "actor", backend=backend)),
    ]
    texts = [f"user likes genre {g} and item {i}" for g in "abc" for i in range(6)]
    for macro in pairs[0]:
        for t in texts:
            macro.add(f"reflection on {t}", t)
    for actor in pairs[1]:
        for i, t in enumerate(texts):
            actor.record(t, f"item {i % 4}", 1.0 if i % 3 else -1.0)
    for query in ["user likes genre a and item 3", "nothing alike", texts[5]]:
        assert pairs[0][0].retrieve(query, 2) == pairs[0][1].retrieve(query, 2)
        assert pairs[1][0].hint(query) == pairs[1][1].hint(query)


ARGS = dict(
    dataset="synthetic",
    llm="scripted",
    embeddings="hashing",
    train_users=4,
    test_users=3,
    max_steps=4,
    train_batch=2,
    concurrency=3,
)


def run_episodes(run: Path) -> dict:
    """Return every episode's outcome and what its agents retrieved, keyed by episode."""
    out = {}
    for line in (run / "episodes.jsonl").read_text().splitlines():
        r = json.loads(line)
        steps = [
            (s["item"], s["reward"], s.get("value"), s.get("actor_hint"), s.get("critic_hint"))
            for s in r["steps"]
        ]
        out[(r["seed"], r["phase"], r["user"])] = (r["r_traj"], steps, r.get("reflections"))
    return out


@pytest.mark.slow
def test_store_backend_runs_equal_faiss_runs(tmp_path: Path):
    """A learning BiLLP run on the store backend retrieves and does what the FAISS run does."""
    clear_cache()
    Experiment(RunConfig(methods=["billp"], **ARGS), tmp_path / "faiss").run()
    clear_cache()
    clear_stores()
    config = RunConfig(methods=["billp"], memory_backend="store", **ARGS)
    Experiment(config, tmp_path / "store").run()
    faiss_run, store_run = run_episodes(tmp_path / "faiss"), run_episodes(tmp_path / "store")
    assert store_run == faiss_run
    # The test phase did retrieve something: the equality is not between two empty memories.
    assert any(steps[3] for _, s, _ in store_run.values() for steps in s)
    assert (tmp_path / "store" / "billp" / "seed-0" / "memory" / "actor" / STATE_FILE).is_file()
    clear_cache()
