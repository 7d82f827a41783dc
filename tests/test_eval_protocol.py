"""Protocol pieces: users, batches, the episode log, run-dir checks, and batch learning.

The key guard: `learn_from` (lessons written after a batch) must write exactly what the critic
and reflector nodes write when an episode runs with learn=True.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eval.log import EpisodeLog
from eval.protocol import (
    CONTEXT_FIELDS,
    Batch,
    RunConfig,
    RunDir,
    RunDirError,
    commit_memory,
    learn_from,
    plan,
    restore_memory,
    select_users,
)
from eval.runner import Outcome, llm_record, play_policy
from graph import Context, build_graph
from nodes.resources import clear_cache, get_resources


def test_users_are_seeded_prefixes():
    users = list(range(100, 150))
    a = select_users(users, 5, seed=0, split="test")
    assert a == select_users(users, 5, seed=0, split="test")
    assert a[:3] == select_users(users, 3, seed=0, split="test")
    assert a != select_users(users, 5, seed=1, split="test")
    assert set(a) <= set(users) and len(set(a)) == 5
    with pytest.raises(ValueError, match="asked for 51 test users"):
        select_users(users, 51, seed=0, split="test")


def test_plan_batches_learning_methods_only():
    c = RunConfig(methods=["billp"], train_batch=2)
    assert plan(c, "react", [1, 2, 3], [7, 8]) == [Batch("test", [7, 8], False)]
    assert plan(c, "billp", [1, 2, 3], [7, 8]) == [
        Batch("train", [1, 2], True),
        Batch("train", [3], True),
        Batch("test", [7, 8], False),
    ]
    cont = RunConfig(methods=["billp"], train_batch=2, continual=True)
    assert plan(cont, "billp", [1], [7, 8, 9])[1:] == [
        Batch("test", [7, 8], True),
        Batch("test", [9], True),
    ]


def test_config_validation_names_the_bad_option():
    with pytest.raises(ValueError, match="unknown method"):
        RunConfig(methods=["nope"]).validate()
    with pytest.raises(ValueError, match="--test-users"):
        RunConfig(methods=["random"], test_users=0).validate()
    with pytest.raises(ValueError, match="--grounding"):
        RunConfig(methods=["billp"], grounding="x").validate()


def test_episode_log_cuts_a_torn_tail_and_refuses_duplicates(tmp_path):
    log = EpisodeLog(tmp_path)
    rec = {"method": "m", "seed": 0, "phase": "test", "user": 1, "r_traj": 3.0}
    log.append(rec)
    log.append({**rec, "user": 2})
    with pytest.raises(ValueError, match="already recorded"):
        log.append(rec)
    with open(tmp_path / "episodes.jsonl", "ab") as fh:
        fh.write(b'{"method": "m", "seed": 0, "ph')  # a kill mid-write
    again = EpisodeLog(tmp_path)
    assert len(again) == 2 and again.torn_bytes > 0
    assert (tmp_path / "episodes.jsonl").read_bytes().endswith(b"}\n")
    again.append({**rec, "user": 3})
    assert len(EpisodeLog(tmp_path)) == 3


def test_run_dir_refuses_other_settings_but_allows_more_methods(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.prepare(RunConfig(methods=["random"], test_users=3))
    rd.prepare(RunConfig(methods=["oracle"], test_users=3, concurrency=8))
    assert rd.read_config().methods == ["random", "oracle"]
    with pytest.raises(RunDirError, match="test_users: 3 -> 4"):
        rd.prepare(RunConfig(methods=["random"], test_users=4))


def _ctx(tmp_path: Path, name: str, **kw) -> Context:
    base = dict(dataset="synthetic", llm="scripted", embeddings="hashing", max_steps=6)
    return Context(**{**base, "memory_dir": str(tmp_path / name), **kw})


def _entries(folder: Path) -> dict:
    out = {}
    for store in ("macro", "actor", "critic"):
        data = json.loads((folder / store / "entries.json").read_text())
        out[store] = (data["keys"], data["payloads"])
    return out


@pytest.mark.parametrize(
    ("variant", "critic"), [("billp", "llm"), ("billp", "learned"), ("reflexion", "llm")]
)
def test_learn_from_writes_what_the_nodes_write(tmp_path, variant, critic):
    live = _ctx(tmp_path, "live", learn=True, critic=critic)
    state = build_graph(variant).invoke({"user_id": 21}, context=live)
    res_live = get_resources(live)
    res_live.memories.save()
    titles = res_live.catalogue.titles
    outcome = Outcome(state=dict(state), attempts=1, seconds=0.0, cache_hits=0)
    record = llm_record(outcome, titles=titles, method=variant, seed=0, phase="train", user=21)

    replay = _ctx(tmp_path, "replay", learn=False, critic=critic)
    res = get_resources(replay)
    asyncio.run(learn_from(res, replay, record))
    res.memories.save()
    assert _entries(tmp_path / "replay") == _entries(tmp_path / "live")
    if variant == "billp":
        assert len(res.memories.actor) == len(state["steps"]) > 0
    if critic == "learned":
        a = load_file(str(tmp_path / "live" / "value_net" / "value_net.safetensors"))
        b = load_file(str(tmp_path / "replay" / "value_net" / "value_net.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_commit_and_restore_memory_snapshots(tmp_path):
    ctx = _ctx(tmp_path, "seed/memory", learn=False)
    seed_dir = tmp_path / "seed"
    assert restore_memory(seed_dir) == 0
    res = get_resources(ctx)
    res.memories.macro.add("lesson one", "history a")
    commit_memory(seed_dir, res.memories, 1, "train")
    res.memories.macro.add("lesson two", "history b")
    res.memories.save()  # written, but never committed: a kill here must not keep it
    assert restore_memory(seed_dir) == 1
    clear_cache()
    assert len(get_resources(ctx).memories.macro) == 1
    state = json.loads((seed_dir / "learned.json").read_text())
    assert state == {"batches": 1, "snapshot": "b0001-train", "phase": "train"}


def test_play_policy_matches_evaluate_policy():
    import dataclasses

    from nodes.resources import env_bundle
    from simulator.policies import PopularityPolicy, RandomPolicy, evaluate_policy

    bundle = env_bundle(_ctx(Path("/unused"), "m"))
    world = dataclasses.replace(bundle.world("test"), max_steps=8)
    users = bundle.test_users[:20]
    titles = bundle.dataset.titles()
    for policy in (RandomPolicy(bundle.dataset.n_items), PopularityPolicy(bundle.popularity)):
        expected = evaluate_policy(world, policy, users, seed=3)
        records = play_policy(world, policy, users, seed=3, titles=titles)
        assert [r["len"] for r in records] == expected["len"].tolist()
        assert [r["r_traj"] for r in records] == pytest.approx(expected["r_traj"].tolist())
        assert [r["quit_reason"] for r in records] == expected["quit_reason"].tolist()
        assert all(len(r["steps"]) == s for r, s in zip(records, expected["steps"], strict=True))


def test_run_config_fields_shared_with_context_have_its_types_and_defaults():
    """A knob both know is declared the same way, and reaches the graph unchanged."""
    run = {f.name: f for f in dataclasses.fields(RunConfig)}
    graph = {f.name: f for f in dataclasses.fields(Context)}
    assert len(CONTEXT_FIELDS) >= 16
    for name in CONTEXT_FIELDS:
        assert run[name].type == graph[name].type, name
        assert run[name].default == graph[name].default, name
    config = RunConfig(methods=["billp"], grounding="shortlist", temperature=0.2, explore=False)
    ctx = config.context(seed=3, split="train", memory_dir=None)
    assert (ctx.grounding, ctx.temperature, ctx.explore, ctx.seed) == ("shortlist", 0.2, False, 3)
