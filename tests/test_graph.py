"""The BiLLP graph end to end, with the scripted test double and hashing embeddings."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from graph import Context, build_graph
from nodes.resources import clear_cache, get_resources

QUIT_REASONS = {"low_rating", "similar", "repeat", "max_steps"}


def ctx(tmp_path: Path, **kw: Any) -> Context:
    base = dict(
        dataset="synthetic",
        llm="scripted",
        embeddings="hashing",
        memory_dir=str(tmp_path / "mem"),
        learn=True,
    )
    return Context(**{**base, **kw})


def test_python_api_runs_an_episode_to_the_end(tmp_path):
    result = build_graph().invoke({"user_id": 0}, context=ctx(tmp_path))
    assert result["done"] is True
    assert result["quit_reason"] in QUIT_REASONS
    assert len(result["recommended"]) == len(result["rewards"]) == len(result["steps"]) >= 1
    assert len(set(result["recommended"])) == len(result["recommended"])  # grounding excludes
    accepted = [s for s in result["steps"] if s["accepted"]]
    assert sum(result["rewards"]) == pytest.approx(sum(s["rating"] for s in accepted))
    assert result["reflection"]
    assert result["usage"]["planner"]["calls"] == len(result["steps"])


async def test_async_invoke_and_max_steps_truncation(tmp_path):
    result = await build_graph("react").ainvoke({"user_id": 1}, context=ctx(tmp_path, max_steps=3))
    assert result["done"]
    assert len(result["steps"]) <= 3
    if result["quit_reason"] == "max_steps":
        assert len(result["steps"]) == 3 and all(s["accepted"] for s in result["steps"])


def test_advantage_follows_the_td_rule_on_the_critics_scale(tmp_path):
    c = ctx(tmp_path)
    result = build_graph().invoke({"user_id": 2}, context=c)
    previous = 0.0  # V(s0) = 0
    for step in result["steps"]:
        quit = step["quit_reason"] in {"low_rating", "similar", "repeat"}
        reward = -10.0 if quit else step["rating"] - 3.0  # learning reward (nodes.lessons)
        raw = reward + c.gamma * step["value"]
        assert step["value_before"] == previous
        assert step["advantage"] == pytest.approx(raw - previous)
        assert step["target"] == pytest.approx(min(5.0, max(-5.0, raw)))
        assert -5.0 <= step["target"] <= 5.0  # the critic's own scale
        previous = step["value"]
    assert result["steps"][-1]["value"] == 0.0  # V = 0 once the episode ended


def test_quitting_step_is_always_stored_as_bad(tmp_path):
    c = ctx(tmp_path)
    for user in range(20):
        result = build_graph().invoke({"user_id": user}, context=c)
        if result["quit_reason"] in {"low_rating", "similar", "repeat"}:
            break
    else:
        pytest.fail("no episode ended with a quit")
    last = result["steps"][-1]
    assert last["advantage"] < 0
    res = get_resources(c)
    before = {**result, "recommended": result["recommended"][:-1]}
    from nodes.views import state_key

    labels = res.memories.actor.memory.get(state_key(res, before))
    assert labels[str(last["item"])] == -1


def test_memories_persist_and_are_reused_after_a_restart(tmp_path):
    c = ctx(tmp_path)
    first = build_graph().invoke({"user_id": 3}, context=c)
    mem = get_resources(c).memories
    assert len(mem.macro) == 1 and len(mem.actor) == len(first["steps"])
    assert (tmp_path / "mem" / "macro" / "index.faiss").is_file()
    clear_cache()  # a new process
    again = get_resources(c).memories
    assert len(again.macro) == 1 and len(again.actor) == len(first["steps"])
    second = build_graph().invoke({"user_id": 3}, context=c)
    assert second["reflections"] == [first["reflection"]]
    # The same user and the same first state: the actor memory now hints the first step.
    assert second["steps"][0]["actor_hint"] is not None


def test_frozen_run_leaves_memories_untouched(tmp_path):
    build_graph().invoke({"user_id": 4}, context=ctx(tmp_path))
    before = {p: p.read_bytes() for p in (tmp_path / "mem").rglob("*") if p.is_file()}
    result = build_graph().invoke({"user_id": 5}, context=ctx(tmp_path, learn=False))
    assert result["done"]
    # The default (learn=None) plays the test env without writing either.
    build_graph().invoke({"user_id": 6}, context=ctx(tmp_path, learn=None))
    after = {p: p.read_bytes() for p in (tmp_path / "mem").rglob("*") if p.is_file()}
    assert before == after
    assert len(get_resources(ctx(tmp_path)).memories.macro) == 1


def test_reflections_retrieved_top_k(tmp_path):
    c = ctx(tmp_path, reflection_k=2)
    for user in (6, 7, 8):
        build_graph("billp").invoke({"user_id": user}, context=c)
    result = build_graph("billp").invoke({"user_id": 9}, context=c)
    assert len(result["reflections"]) == 2


@pytest.mark.parametrize(
    ("variant", "nodes"),
    [
        ("billp", {"start", "planner", "actor", "user", "critic", "reflector"}),
        ("billp-nomacro", {"start", "planner", "actor", "user", "critic"}),
        ("billp-nomicro", {"start", "planner", "actor", "user", "reflector"}),
        ("reflexion", {"start", "planner", "actor", "user", "reflector"}),
        ("react", {"start", "planner", "actor", "user"}),
        ("actonly", {"start", "actor", "user"}),
    ],
)
def test_variants_differ_in_which_nodes_run(tmp_path, variant, nodes):
    graph = build_graph(variant)
    seen = set()
    for update in graph.stream({"user_id": 10}, context=ctx(tmp_path), stream_mode="updates"):
        seen.update(update)
    assert seen == nodes


def test_every_malformed_output_falls_back_without_crashing(tmp_path):
    c = ctx(tmp_path, max_steps=4, llm="scripted?faults=malformed,schema")
    result = build_graph().invoke({"user_id": 11}, context=c)
    assert result["done"]
    n = len(result["steps"])
    fb = result["fallbacks"]
    assert fb["planner"] == n and fb["actor"] == n and fb["reflector"] == 1
    ended = result["quit_reason"] is not None
    assert fb["critic"] == n - int(ended)  # no critic call once the episode has ended
    assert all(s["match"] == "fallback" for s in result["steps"])
    assert result["reflection"].startswith("The session lasted")


def test_shortlist_mode_picks_only_candidates(tmp_path):
    result = build_graph().invoke(
        {"user_id": 12}, context=ctx(tmp_path, grounding="shortlist", shortlist_k=5)
    )
    assert all(s["match"] == "shortlist" and not s["replaced"] for s in result["steps"])


def test_learned_critic_makes_no_llm_calls(tmp_path):
    result = build_graph().invoke({"user_id": 13}, context=ctx(tmp_path, critic="learned"))
    assert result["usage"]["critic"]["calls"] == 0
    assert all(math.isfinite(s["advantage"]) for s in result["steps"])
    assert get_resources(ctx(tmp_path)).memories.learned_critic.updates == len(result["steps"])


def test_checkpointer_keeps_thread_state(tmp_path):
    graph = build_graph(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t1"}}
    result = graph.invoke({"user_id": 14}, config=config, context=ctx(tmp_path))
    snapshot = graph.get_state(config)
    assert snapshot.values["recommended"] == result["recommended"]
    assert snapshot.next == ()


def test_unknown_user_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="user_id 999999 is not a user"):
        build_graph().invoke({"user_id": 999_999}, context=ctx(tmp_path))
