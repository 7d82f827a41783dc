"""Whole `billp run` experiments under faults and kills (subprocesses; marked slow).

- 30% faulty OpenAI-compatible endpoint, 50 episodes, 8 in flight: the run completes, every
  episode is recorded, and the fallbacks the faults caused are counted.
- SIGKILL at 5 seeded points, re-running the same command each time: the final episodes,
  per-episode results and memories equal those of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent
TRANSIENT = ("429", "429_bare", "500", "timeout")
RUN_LIMIT_S = 240

pytestmark = pytest.mark.slow


def billp_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "200", "BILLP_LLM_BASE_DELAY": "0.01", **extra}
    env.pop("BILLP_DEBUG", None)
    return env


def billp(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "eval.cli", "run", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen) -> str:
    try:
        output, _ = proc.communicate(timeout=RUN_LIMIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"billp run did not finish in {RUN_LIMIT_S} s:\n{output[-3000:]}")
    assert proc.returncode == 0, output[-3000:]
    return output


def episodes(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "episodes.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_run_completes_at_30_percent_faults(tmp_path):
    out = tmp_path / "run"
    args = ["--method", "billp", "--llm", "openai:fake-model", "--dataset", "synthetic"]
    args += ["--embeddings", "hashing", "--train-users", "25", "--test-users", "25"]
    args += ["--max-steps", "5", "--concurrency", "8", "--no-cache", "--out", str(out)]
    with FakeOpenAI(fault_rate=0.3, latency=0.01, seed=7, timeout_sleep=1.0) as fake:
        env = billp_env(
            OPENAI_BASE_URL=fake.url, OPENAI_API_KEY="dummy-key", BILLP_LLM_TIMEOUT="0.5"
        )
        started = time.perf_counter()
        finish(billp(args, env))
        seconds = time.perf_counter() - started
        stats = fake.stats()
    records = [r for r in episodes(out) if r["method"] == "billp"]
    keys = {(r["phase"], r["user"]) for r in records}
    assert len(records) == len(keys) == 50
    assert all(r["status"] == "ok" and r["n_steps"] >= 1 for r in records)
    results = json.loads((out / "results.json").read_text())["methods"]["billp"]
    assert (results["episodes"], results["train_episodes"], results["failed_episodes"]) == (
        25,
        25,
        0,
    )
    fallbacks = sum(r["fallbacks"] for r in records)
    test_fallbacks = sum(r["fallbacks"] for r in records if r["phase"] == "test")
    assert results["fallbacks_per_episode"] == pytest.approx(test_fallbacks / 25)
    assert 0 < fallbacks < stats["faults"] / 2
    # Every request the server saw is a call an episode counted, or a transient failure; give
    # or take the few that a loaded machine turns around (a stalled answer read before the
    # client's timeout fired, or an ordinary one read after).
    transient = sum(stats["by_fault"].get(f, 0) for f in TRANSIENT)
    counted = sum(r["llm_calls"] for r in records) + transient
    assert abs(stats["requests"] - counted) <= max(2, 0.02 * stats["requests"])
    print(
        f"\nbillp run, 50 episodes at 30% faults: {seconds:.0f} s, {stats['requests']} requests, "
        f"{stats['faults']} faults {stats['by_fault']}, {fallbacks} fallbacks, "
        f"recovered {1 - fallbacks / stats['faults']:.0%}"
    )


# ---------------------------------------------------------------- kill and resume

VOLATILE = {"seconds", "attempts", "cache_hits", "resumed", "llm_seconds", "usage"}


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """Drop what legitimately differs between runs: timings, attempts, resume flags."""
    out = {k: v for k, v in record.items() if k not in VOLATILE}
    out["steps"] = [
        {k: v for k, v in step.items() if k not in ("usage",)} for step in record["steps"]
    ]
    return out


def memory_state(folder: Path) -> dict[str, Any]:
    """Return each store's {key: (payload, vector)} and meta: order-free, exact."""
    state: dict[str, Any] = {}
    for store in sorted(p for p in folder.iterdir() if (p / "entries.json").is_file()):
        entries = json.loads((store / "entries.json").read_text(encoding="utf-8"))
        index = faiss.read_index(str(store / "index.faiss"))
        vectors = index.reconstruct_n(0, index.ntotal) if index.ntotal else np.zeros((0, 0))
        state[store.name] = {
            "meta": entries["meta"],
            "entries": {
                k: (json.dumps(p, sort_keys=True), np.round(v, 6).tobytes())
                for k, p, v in zip(entries["keys"], entries["payloads"], vectors, strict=True)
            },
        }
    return state


def run_state(run_dir: Path) -> dict[str, Any]:
    seed_dir = run_dir / "billp" / "seed-0"
    recs = episodes(run_dir)
    keys = [(r["method"], r["seed"], r["phase"], r["user"]) for r in recs]
    assert len(keys) == len(set(keys)), "an episode was recorded twice"
    return {
        "episodes": {k: comparable(r) for k, r in zip(keys, recs, strict=True)},
        "memory": memory_state(seed_dir / "memory"),
        "learned": json.loads((seed_dir / "learned.json").read_text()),
    }


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path):
    args = ["--method", "billp", "--llm", "scripted", "--dataset", "synthetic"]
    args += ["--embeddings", "hashing", "--train-users", "6", "--test-users", "4"]
    args += ["--train-batch", "2", "--max-steps", "5", "--concurrency", "2"]
    env = billp_env()
    clean = tmp_path / "clean"
    finish(billp([*args, "--out", str(clean)], env))
    expected = run_state(clean)
    total = len(expected["episodes"])

    killed = tmp_path / "killed"
    rng = random.Random(20240501)
    points = sorted(rng.sample(range(total), 5))  # kill once this many episodes are recorded
    kills = 0
    for point in points:
        proc = billp([*args, "--out", str(killed)], env)
        log = killed / "episodes.jsonl"
        deadline = time.monotonic() + RUN_LIMIT_S
        while proc.poll() is None and time.monotonic() < deadline:
            done = len(log.read_bytes().splitlines()) if log.is_file() else 0
            if done >= point:
                time.sleep(rng.uniform(0.0, 1.5))  # land mid-episode or mid-save
                break
            time.sleep(0.05)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.communicate()
    finish(billp([*args, "--out", str(killed)], env))
    assert kills >= 3, f"only {kills} kills landed before the run finished"
    got = run_state(killed)
    assert got["episodes"].keys() == expected["episodes"].keys()
    for key, record in expected["episodes"].items():
        assert got["episodes"][key] == record, f"episode {key} differs after resume"
    assert got["learned"] == expected["learned"]
    assert got["memory"] == expected["memory"]
    resumed = sum(bool(r.get("resumed")) for r in episodes(killed))
    print(f"\nkill and resume: {kills} SIGKILLs at {points}, {resumed} episodes resumed mid-way")
