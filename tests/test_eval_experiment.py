"""Whole experiments in-process: concurrency does not change results, frozen vs continual test
memories, resuming a finished or torn run, failed episodes counted, and the report files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import eval.experiment as experiment_module
from eval.experiment import Experiment
from eval.log import EpisodeLog
from eval.protocol import RunConfig
from eval.report import PLOTS, render
from graph import build_graph

# What must not depend on how episodes were scheduled (seconds and cache hits may).
STABLE = ("len", "r_traj", "quit_reason", "llm_calls", "prompt_tokens", "reflection", "status")


def config(**kw) -> RunConfig:
    base = dict(
        methods=["billp", "random"],
        dataset="synthetic",
        llm="scripted",
        embeddings="hashing",
        train_users=4,
        test_users=3,
        seeds=[0, 1],
        max_steps=5,
        train_batch=2,
    )
    return RunConfig(**{**base, **kw})


def outcomes(run: Path) -> dict:
    out = {}
    for r in EpisodeLog(run).records():
        key = (r["method"], r["seed"], r["phase"], r["user"])
        steps = [(s["item"], s["reward"], s.get("value"), s.get("thought")) for s in r["steps"]]
        out[key] = ({k: r.get(k) for k in STABLE}, steps, r.get("reflections"))
    return out


@pytest.fixture(scope="module")
def sequential_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("k1") / "run"
    Experiment(config(concurrency=1), run).run()
    return run


def test_concurrency_gives_the_same_episodes(sequential_run, tmp_path):
    run = tmp_path / "k4"
    Experiment(config(concurrency=4), run).run()
    a, b = outcomes(sequential_run), outcomes(run)
    assert set(a) == set(b)
    assert a == b
    # learning happened: the second training batch saw reflections of the first
    tests = [v for k, v in a.items() if k[0] == "billp" and k[2] == "test"]
    assert all(len(refl) > 0 for _, _, refl in tests)
    phases = {(k[0], k[2]) for k in a}
    assert phases == {("billp", "train"), ("billp", "test"), ("random", "test"), ("oracle", "test")}


def test_rerunning_a_finished_run_changes_nothing_and_a_torn_tail_reruns(sequential_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(sequential_run, run)
    log_file = run / "episodes.jsonl"
    lines = log_file.read_bytes().splitlines(keepends=True)
    # Drop the last billp test episode and leave half of its line, as a kill mid-write would.
    last = max(i for i, line in enumerate(lines) if b'"phase": "test"' in line and b"billp" in line)
    torn = lines[last][: len(lines[last]) // 2]
    log_file.write_bytes(b"".join(lines[:last] + lines[last + 1 :]) + torn)
    Experiment(config(concurrency=2), run).run()
    assert outcomes(run) == outcomes(sequential_run)
    assert len(log_file.read_bytes().splitlines()) == len(lines)


def _files(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("continual", [False, True])
def test_frozen_test_leaves_memories_untouched_and_continual_changes_them(tmp_path, continual):
    run = tmp_path / "run"
    c = config(methods=["billp"], train_users=2, test_users=2, seeds=[0], continual=continual)
    Experiment(c, run).run()
    seed_dir = run / "billp" / "seed-0"
    after_train = seed_dir / "snapshots" / "b0001-train"
    tests = EpisodeLog(run).select(method="billp", phase="test")
    assert {r["learning"] for r in tests} == {"continual" if continual else "frozen"}
    if continual:
        assert _files(seed_dir / "memory") != _files(after_train)
        assert (seed_dir / "snapshots" / "b0002-test").is_dir()
    else:
        assert _files(seed_dir / "memory") == _files(after_train)


def test_a_failing_episode_is_retried_then_recorded_as_failed(tmp_path, monkeypatch):
    c = config(methods=["react"], test_users=3, seeds=[0], retries=1)
    unlucky = Experiment(c, tmp_path / "probe").users(
        experiment_module.env_bundle(c.context(seed=0, split="test", memory_dir=None)), 0
    )[1][1]

    async def planner(state, runtime):
        if state["user_id"] == unlucky:
            raise RuntimeError("planner exploded")
        return {"thought": "go", "pending": {}}

    def patched(variant, **kw):
        return build_graph(variant, replace={"planner": planner}, **kw)

    monkeypatch.setattr(experiment_module, "build_graph", patched)
    Experiment(c, tmp_path / "run").run()
    records = {r["user"]: r for r in EpisodeLog(tmp_path / "run").select(method="react")}
    assert len(records) == 3
    assert records[unlucky]["status"] == "failed" and records[unlucky]["attempts"] == 2
    assert "planner exploded" in records[unlucky]["error"]
    results, _ = render(tmp_path / "run")
    assert results["methods"]["react"]["failed_episodes"] == 1
    assert results["methods"]["react"]["episodes"] == 2


def test_report_writes_every_output(sequential_run):
    results, files = render(sequential_run)
    names = {p.name for p in files}
    assert {"results.json", "results.csv", "results.md", *PLOTS} <= names
    assert all(p.stat().st_size > 0 for p in files)
    billp = results["methods"]["billp"]
    for key in ("len", "r_each", "r_traj"):
        assert set(billp[key]) == {"mean", "ci95"}
    assert billp["episodes"] == 6 and billp["train_episodes"] == 8
    assert results["methods"]["random"]["pct_oracle"] is not None
    md = (sequential_run / "results.md").read_text()
    assert "test double" in md and "frozen" in md and "seeds 0, 1" in md


def test_a_second_run_on_the_same_cache_replays_every_answer(sequential_run, tmp_path):
    """The run's answer cache (Context.llm_cache): every LLM call of an identical run is a hit,
    and the episodes are the same as the first run's, which paid for every call."""
    first = [r for r in EpisodeLog(sequential_run).records() if r["method"] == "billp"]
    assert first and all(r["llm_calls"] > 0 for r in first)
    assert sum(r["cache_hits"] for r in first) < sum(r["llm_calls"] for r in first)
    again = tmp_path / "again"
    Experiment(config(concurrency=1, cache_dir=str(sequential_run)), again).run()
    second = [r for r in EpisodeLog(again).records() if r["method"] == "billp"]
    assert [r["cache_hits"] for r in second] == [r["llm_calls"] for r in second]
    assert outcomes(again) == outcomes(sequential_run)
