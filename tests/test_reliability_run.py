"""Whole `billp run` experiments under faults and kills (subprocesses; marked slow).

- 30% faulty OpenAI-compatible endpoint, 50 episodes, 8 in flight: the run completes, every
  episode is recorded, and the fallbacks the faults caused are counted.
- SIGKILL at 6 fixed points, re-running the same command each time: the final episodes,
  per-episode results and memories equal those of an uninterrupted run.

No outcome depends on the clock, so a loaded machine cannot change one: the faulty endpoint
serves only faults the client sees at once, under a client timeout no answer comes near, and
each killed run kills itself at a fixed point of its own progress (this file run as a script),
never after a timer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from nodes.llm.fake_server import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent
TRANSIENT = ("429", "429_bare", "500")
"""Transient faults the client sees at once; stalls are tested in test_reliability_graph."""
CLIENT_TIMEOUT_S = "60"
"""Far above any answer's latency on a loaded machine: no answer is ever taken for a stall."""
RUN_LIMIT_S = 240
"""Only a hung run waits this long: no outcome waits on a clock."""

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
    from nodes.llm.fake_server import FAULTS

    faults = [f for f in FAULTS if f != "timeout"]
    with FakeOpenAI(fault_rate=0.3, faults=faults, latency=0.01, seed=7) as fake:
        env = billp_env(
            OPENAI_BASE_URL=fake.url, OPENAI_API_KEY="dummy-key", BILLP_LLM_TIMEOUT=CLIENT_TIMEOUT_S
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
    # Every request the server saw is a call an episode counted, or a transient failure:
    # exactly, since no answer can outlast the client's timeout.
    transient = sum(stats["by_fault"].get(f, 0) for f in TRANSIENT)
    assert stats["requests"] == sum(r["llm_calls"] for r in records) + transient
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


KILLS = (("step", 0), ("save", 1), ("record", 3), ("save", 5), ("step", 7), ("record", 12))
"""(where, N): each killed run SIGKILLs itself at the first `where` once N episodes are recorded.

- step: an actor step, mid-episode with its checkpoints half-way;
- save: learned.json about to name a new memory snapshot (memories and snapshot written, the
  batch not yet committed);
- record: just after an episode's record is written (its checkpoint not yet deleted, its batch
  not yet learnt from, the report not yet written).

The 14 episodes of the run below are 3 training batches of 2 (each followed by a save), 4 test
episodes and 4 oracle ones: every kill point lies ahead of the run it is given to, so every
killed run is killed, and the points cover each phase.
"""


def self_killing_run(args: list[str], env: dict[str, str], where: str = "", point: int = 0) -> str:
    """Run `billp run ARGS` (this file as a script); return its output once it ends or dies.

    The same graph every time (the kill point is a node that does nothing unless its kill is
    due), so a resumed episode continues from its checkpoint.
    """
    command = [sys.executable, __file__, where or "none", str(point), *args]
    try:
        proc = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=RUN_LIMIT_S,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"billp run did not end in {RUN_LIMIT_S} s:\n{str(exc.output)[-3000:]}")
    expected = -signal.SIGKILL if where else 0
    assert proc.returncode == expected, f"{where or 'no kill'} at {point}:\n{proc.stdout[-3000:]}"
    return proc.stdout


def _kill_at(where: str, point: int, argv: list[str]) -> None:
    """Run the CLI; SIGKILL this process at the first `where` once `point` episodes are recorded."""
    import eval.experiment as experiment
    import eval.protocol as protocol
    from eval.cli import main
    from eval.log import EpisodeLog

    log = Path(argv[argv.index("--out") + 1]) / "episodes.jsonl"

    def kill_if_due(at: str) -> None:
        if at != where:
            return
        recorded = len(log.read_bytes().splitlines()) if log.is_file() else 0
        if recorded >= point:
            os.kill(os.getpid(), signal.SIGKILL)

    async def kill_point(state: dict) -> dict:
        kill_if_due("step")
        return {}

    build_graph, write_json, append = (
        experiment.build_graph,
        protocol.atomic_write_json,
        EpisodeLog.append,
    )

    def build(variant: str, **kw: Any) -> Any:
        return build_graph(variant, insert_after={"actor": ("kill_point", kill_point)}, **kw)

    def naming(path: Any, obj: Any) -> None:
        if Path(path).name == protocol.LEARNED_FILE:
            kill_if_due("save")
        write_json(path, obj)

    def appended(self: EpisodeLog, record: Any) -> None:
        append(self, record)
        kill_if_due("record")

    experiment.build_graph, protocol.atomic_write_json = build, naming
    EpisodeLog.append = appended  # type: ignore[method-assign]
    sys.argv = ["billp", "run", *argv]
    main()


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path):
    args = ["--method", "billp", "--llm", "scripted", "--dataset", "synthetic"]
    args += ["--embeddings", "hashing", "--train-users", "6", "--test-users", "4"]
    args += ["--train-batch", "2", "--max-steps", "5", "--concurrency", "2"]
    env = billp_env()
    clean = tmp_path / "clean"
    self_killing_run([*args, "--out", str(clean)], env)
    expected = run_state(clean)
    assert len(expected["episodes"]) == 14 and max(p for _, p in KILLS) < 14

    killed = tmp_path / "killed"
    recorded = []
    for where, point in KILLS:
        self_killing_run([*args, "--out", str(killed)], env, where, point)
        log = killed / "episodes.jsonl"
        recorded.append(len(log.read_bytes().splitlines()) if log.is_file() else 0)
        if where == "record":  # killed right after the append that reached the point
            assert recorded[-1] == point
        if where == "save":  # mid-save: the new snapshot is written, learned.json not yet
            seed_dir = killed / "billp" / "seed-0"
            learned = seed_dir / "learned.json"
            named = json.loads(learned.read_text())["snapshot"] if learned.is_file() else None
            snapshots = [p.name for p in (seed_dir / "snapshots").iterdir()]
            assert max(n for n in snapshots if not n.startswith(".")) != named
    self_killing_run([*args, "--out", str(killed)], env)
    got = run_state(killed)
    assert got["episodes"].keys() == expected["episodes"].keys()
    for key, record in expected["episodes"].items():
        assert got["episodes"][key] == record, f"episode {key} differs after resume"
    assert got["learned"] == expected["learned"]
    assert got["memory"] == expected["memory"]
    resumed = sum(bool(r.get("resumed")) for r in episodes(killed))
    print(
        f"\nkill and resume: SIGKILLs at {KILLS} with {recorded} episodes recorded, "
        f"{resumed} episodes resumed mid-way"
    )


if __name__ == "__main__":  # a run that kills itself: python tests/test_reliability_run.py ...
    _kill_at("" if sys.argv[1] == "none" else sys.argv[1], int(sys.argv[2]), sys.argv[3:])
