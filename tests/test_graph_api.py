"""The compiled graph's public surface: every entry point, every extension node signature.

Our nodes are async; `graph.invoke` / `graph.stream` drive the async path on a private loop
(`graph.bridge`), so they work with nodes of any signature `StateGraph.add_node` accepts, and from
inside a running event loop (a notebook). The scripted test double makes runs repeatable.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.runtime import Runtime

from graph import Context, build_graph
from graph.bridge import drive
from graph.builder import BiLLPGraph
from nodes.resources import CALL_TIME_FIELDS, SHAPING_FIELDS, get_resources

MAX_STEPS = 3
Update = Callable[[dict, Any, Any], dict]


@pytest.fixture
def context(tmp_path) -> Context:
    return Context(
        dataset="synthetic",
        llm="scripted",
        embeddings="hashing",
        memory_dir=str(tmp_path / "m"),
        max_steps=MAX_STEPS,
    )


# --------------------------------------------------------------- extension node signatures

KINDS = (
    "async (state)",
    "async (state, config)",
    "async (state, runtime)",
    "async (state, *, runtime)",
    "async (state, config, *, runtime)",
    "sync (state)",
    "sync (state, config)",
    "sync (state, runtime)",
    "sync (state, *, runtime)",
    "async callable object",
    "RunnableLambda",
)


def signature_node(kind: str, update: Update) -> Any:
    """Return a node of signature `kind` that answers `update(state, runtime, config)`."""
    if kind == "async (state)":

        async def node(state):
            return update(state, None, None)
    elif kind == "async (state, config)":

        async def node(state, config: RunnableConfig):
            return update(state, None, config)
    elif kind == "async (state, runtime)":

        async def node(state, runtime: Runtime[Context]):
            return update(state, runtime, None)
    elif kind == "async (state, *, runtime)":

        async def node(state, *, runtime: Runtime[Context]):
            return update(state, runtime, None)
    elif kind == "async (state, config, *, runtime)":

        async def node(state, config: RunnableConfig, *, runtime: Runtime[Context]):
            return update(state, runtime, config)
    elif kind == "sync (state)":

        def node(state):
            return update(state, None, None)
    elif kind == "sync (state, config)":

        def node(state, config: RunnableConfig):
            return update(state, None, config)
    elif kind == "sync (state, runtime)":

        def node(state, runtime: Runtime[Context]):
            return update(state, runtime, None)
    elif kind == "sync (state, *, runtime)":

        def node(state, *, runtime: Runtime[Context]):
            return update(state, runtime, None)
    elif kind == "async callable object":

        class Node:
            async def __call__(self, state, runtime: Runtime[Context]):
                return update(state, runtime, None)

        return Node()
    elif kind == "RunnableLambda":
        return RunnableLambda(lambda state: update(state, None, None))
    else:
        raise AssertionError(kind)
    return node


def label(kind: str, runtime: Any, config: Any) -> str:
    """What a node saw: its kind, and what LangGraph injected (the run's context, its config)."""
    seen = [kind]
    if runtime is not None:
        seen.append(f"max_steps={runtime.context.max_steps}")
    if config is not None:
        seen.append(f"node={config['metadata']['langgraph_node']}")
    return "|".join(seen)


def expected(kind: str, node: str) -> str:
    seen = [kind]
    if "runtime" in kind or kind == "async callable object":
        seen.append(f"max_steps={MAX_STEPS}")
    if "config" in kind:
        seen.append(f"node={node}")
    return "|".join(seen)


def annotate(kind: str) -> Update:
    """An inserted node's answer: tag the step being built with what the node saw."""
    return lambda state, runtime, config: {
        "pending": {**state["pending"], "tag": label(kind, runtime, config)}
    }


def plan(kind: str) -> Update:
    """A replacement planner's answer: its plan is what it saw."""
    return lambda state, runtime, config: {"thought": label(kind, runtime, config), "pending": {}}


@pytest.mark.parametrize("kind", KINDS)
def test_extension_node_of_every_signature_runs_sync_and_async(kind, context):
    graph = build_graph(
        "billp",
        insert_after={"actor": ("tagger", signature_node(kind, annotate(kind)))},
        replace={"planner": signature_node(kind, plan(kind))},
    )
    by_invoke = graph.invoke({"user_id": 0}, context=context)
    by_ainvoke = asyncio.run(graph.ainvoke({"user_id": 0}, context=context))
    for result in (by_invoke, by_ainvoke):
        assert result["done"] and result["steps"]
        assert {s["tag"] for s in result["steps"]} == {expected(kind, "tagger")}
        assert {s["thought"] for s in result["steps"]} == {expected(kind, "planner")}
    assert stable(by_invoke) == stable(by_ainvoke)


# ------------------------------------------------------------------------- entry points


def stable(state: dict) -> Any:
    """The state without wall-clock seconds (usage counts calls, tokens and seconds)."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "seconds"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(state)


def test_all_four_entry_points_give_the_same_episode(context):
    graph = build_graph("billp")
    assert isinstance(graph, BiLLPGraph) and graph.checkpointer is None  # as Studio gets it
    inputs = {"user_id": 4}
    by_invoke = graph.invoke(inputs, context=context)
    by_ainvoke = asyncio.run(graph.ainvoke(inputs, context=context))
    by_stream = list(graph.stream(inputs, context=context, stream_mode="values"))[-1]

    async def last_of_astream() -> dict:
        return [s async for s in graph.astream(inputs, context=context, stream_mode="values")][-1]

    by_astream = asyncio.run(last_of_astream())
    assert by_invoke["done"] and by_invoke["steps"]
    assert stable(by_invoke) == stable(by_ainvoke) == stable(by_stream) == stable(by_astream)


def test_stream_and_astream_yield_one_update_per_node_in_order(context):
    graph = build_graph("billp")
    nodes = [next(iter(part)) for part in graph.stream({"user_id": 2}, context=context)]

    async def astream_nodes() -> list[str]:
        return [next(iter(p)) async for p in graph.astream({"user_id": 2}, context=context)]

    n = nodes.count("critic")
    assert n >= 1
    assert nodes == ["start", *["planner", "actor", "user", "critic"] * n, "reflector"]
    assert asyncio.run(astream_nodes()) == nodes


def test_invoke_works_inside_a_running_event_loop(context):
    graph = build_graph("react")
    outside = graph.invoke({"user_id": 1}, context=context)

    def notebook_cell() -> dict:  # sync code, called while a loop runs (Jupyter)
        return graph.invoke({"user_id": 1}, context=context)

    async def kernel() -> dict:
        asyncio.get_running_loop()  # a loop is running here
        return notebook_cell()

    assert stable(asyncio.run(kernel())) == stable(outside)


async def test_invoke_from_a_coroutine_of_the_callers_loop(context):
    # pytest-asyncio runs this test on its loop: a sync call here blocks it but completes.
    result = build_graph("actonly").invoke({"user_id": 3}, context=context)
    assert result["done"] and result["steps"]


def test_checkpointed_graph_runs_sync_and_reads_its_state(context):
    graph = build_graph("react", checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t1"}}
    result = graph.invoke({"user_id": 5}, config, context=context)
    assert graph.get_state(config).values == result
    assert asyncio.run(graph.aget_state(config)).values == result


def test_studio_graphs_compile_without_a_checkpointer():
    import graph.studio as studio

    graphs = [studio.billp, studio.billp_nomacro, studio.billp_nomicro]
    graphs += [studio.reflexion, studio.react, studio.actonly]
    assert all(isinstance(g, BiLLPGraph) and g.checkpointer is None for g in graphs)


# -------------------------------------------------------------------------- the bridge


async def numbers(log: list[str], n: int = 3, fail_at: int | None = None) -> AsyncIterator[int]:
    try:
        for i in range(n):
            if i == fail_at:
                raise KeyError(f"failed at {i}")
            log.append(f"made {i}")
            yield i
    finally:
        log.append("closed")


def test_bridge_is_lazy_closes_early_and_raises_what_the_source_raised():
    log: list[str] = []
    items = drive(numbers(log))
    assert next(items) == 0 and log == ["made 0"]  # nothing made ahead of the consumer
    items.close()
    assert log == ["made 0", "closed"]  # an early stop closes the source before returning

    log.clear()
    assert list(drive(numbers(log))) == [0, 1, 2] and log[-1] == "closed"
    with pytest.raises(KeyError, match="failed at 1"):
        list(drive(numbers([], fail_at=1)))


def test_a_sync_call_from_a_node_on_the_bridge_loop_raises_instead_of_hanging():
    inner: list[str] = []

    async def source() -> AsyncIterator[int]:
        yield sum(drive(numbers(inner)))  # an async node calling a sync entry point

    with pytest.raises(RuntimeError, match=r"await graph\.ainvoke"):
        list(drive(source()))
    assert inner == []


def test_every_context_field_is_either_a_resource_key_or_read_at_call_time(tmp_path) -> None:
    """One resource key from Context: a new field must say which kind it is, and the kinds act."""
    names = {f.name for f in dataclasses.fields(Context)}
    assert set(SHAPING_FIELDS) | set(CALL_TIME_FIELDS) == names
    assert not set(SHAPING_FIELDS) & set(CALL_TIME_FIELDS)
    base = Context(dataset="synthetic", llm="scripted", embeddings="hashing",
                   memory_dir=str(tmp_path / "mem"))  # fmt: skip
    res = get_resources(base)
    for name, value in (("actor_quantile", 0.9), ("max_steps", 3), ("grounding", "shortlist")):
        assert get_resources(dataclasses.replace(base, **{name: value})) is res
    other = get_resources(dataclasses.replace(base, temperature=0.0))
    assert other is not res and other.memories is res.memories  # same folder, same memories
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.temperature = 1.0  # type: ignore[misc]
