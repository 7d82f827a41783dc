"""Wire the agents into LangGraph graphs: BiLLP and the baselines that share its nodes.

Each variant is a start node, a per-step pipeline that loops while the user stays, and an
optional reflector at the end:

    billp      start -> planner -> actor(+memory hint) -> user -> critic -> ... -> reflector
    reflexion  start -> planner -> actor -> user -> ... -> reflector
    react      start -> planner -> actor -> user -> ...
    actonly    start -> actor -> user -> ...

Extend without editing the package: `replace={"critic": my_critic}` swaps a node, and
`insert_after={"actor": ("explainer", explain)}` adds one into the step pipeline. A node is any
`async (state, runtime) -> dict` returning only the fields it changes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
from collections.abc import Callable, Mapping
from typing import Any, Literal

# LangGraph's own node wrapper: the one Runnable that carries a sync and an async body and still
# gets `runtime` injected. Public `add_node` builds the same object from a plain function.
from langgraph._internal._runnable import RunnableCallable
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from graph.context import Context
from graph.state import InputState, State
from nodes.actor import make_actor
from nodes.critic import critic
from nodes.episode import make_start, make_user
from nodes.planner import planner
from nodes.reflector import reflector

Variant = Literal["billp", "reflexion", "react", "actonly"]
VARIANTS: tuple[Variant, ...] = ("billp", "reflexion", "react", "actonly")
Node = Callable[..., Any]


def variant_nodes(variant: Variant) -> tuple[Node, list[tuple[str, Node]], Node | None]:
    """Return (start, step pipeline, reflector or None) of a variant."""
    if variant == "billp":
        steps = [
            ("planner", planner),
            ("actor", make_actor(use_memory=True)),
            ("user", make_user(closes_step=False)),
            ("critic", critic),
        ]
        return make_start(use_reflections=True), steps, reflector
    if variant == "reflexion":
        steps = [("planner", planner), ("actor", make_actor(False)), ("user", make_user(True))]
        return make_start(use_reflections=True), steps, reflector
    if variant == "react":
        steps = [("planner", planner), ("actor", make_actor(False)), ("user", make_user(True))]
        return make_start(use_reflections=False), steps, None
    if variant == "actonly":
        steps = [("actor", make_actor(False)), ("user", make_user(True))]
        return make_start(use_reflections=False), steps, None
    raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")


_thread_state = threading.local()
_nested_pool = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="billp-sync-node")


def _thread_loop() -> asyncio.AbstractEventLoop:
    """Return this thread's event loop for sync node calls, created on first use and kept.

    `asyncio.run` per node built a new loop and a new default executor (a fresh thread for every
    `to_thread`) at each node of each step; reusing one loop per thread keeps both warm.
    """
    loop = getattr(_thread_state, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _thread_state.loop = loop
    return loop


def _run_sync(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even under a running loop (notebooks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _thread_loop().run_until_complete(coro)
    return _nested_pool.submit(lambda: _thread_loop().run_until_complete(coro)).result()


def dual(name: str, fn: Node) -> Any:
    """Return node `fn` usable from both `invoke` and `ainvoke`.

    Our nodes are async (they await the LLM and embeddings concurrently across episodes); a plain
    async node would make the sync `graph.invoke(...)` fail. Sync functions pass through.
    """
    if not asyncio.iscoroutinefunction(fn):
        return fn

    def sync(state: Any, runtime: Any) -> Any:
        return _run_sync(fn(state, runtime))

    return RunnableCallable(sync, fn, name=name, trace=False)


def route_after_step(state: dict[str, Any]) -> Literal["continue", "end"]:
    """Loop while the user stays; end when they left or the step limit was reached."""
    if "done" not in state:
        raise RuntimeError("route_after_step: state has no 'done'; did the user node run?")
    return "end" if state["done"] else "continue"


async def _aroute_after_step(state: dict[str, Any]) -> Literal["continue", "end"]:
    return route_after_step(state)


# A plain function router runs in a worker thread under `ainvoke` and opens a traced run: two
# thread hops and a callback run per step. With an async twin and no tracing it runs inline.
_ROUTER = RunnableCallable(
    route_after_step, _aroute_after_step, name="route_after_step", trace=False
)


def make_builder(
    variant: Variant = "billp",
    *,
    replace: Mapping[str, Node] | None = None,
    insert_after: Mapping[str, tuple[str, Node]] | None = None,
) -> StateGraph:
    """Return the uncompiled graph of a variant, with nodes replaced or inserted."""
    start, steps, end_node = variant_nodes(variant)
    names = {"start", *(n for n, _ in steps), *(["reflector"] if end_node else [])}
    replace = dict(replace or {})
    unknown = set(replace) - names
    if unknown:
        raise ValueError(f"cannot replace {sorted(unknown)}: {variant} has nodes {sorted(names)}")
    for anchor, (name, _) in (insert_after or {}).items():
        if anchor not in {n for n, _ in steps}:
            raise ValueError(f"cannot insert after {anchor!r}: not a step node of {variant}")
        if name in names:
            raise ValueError(f"node name {name!r} is already used in {variant}")
    pipeline: list[tuple[str, Node]] = []
    for name, fn in steps:
        pipeline.append((name, replace.get(name, fn)))
        if insert_after and name in insert_after:
            pipeline.append(insert_after[name])

    builder = StateGraph(State, context_schema=Context, input_schema=InputState)
    builder.add_node("start", dual("start", replace.get("start", start)))
    for name, fn in pipeline:
        builder.add_node(name, dual(name, fn))
    builder.add_edge(START, "start")
    builder.add_edge("start", pipeline[0][0])
    for (a, _), (b, _) in itertools.pairwise(pipeline):
        builder.add_edge(a, b)
    finish = END
    if end_node is not None:
        builder.add_node("reflector", dual("reflector", replace.get("reflector", end_node)))
        builder.add_edge("reflector", END)
        finish = "reflector"
    builder.add_conditional_edges(
        pipeline[-1][0], _ROUTER, {"continue": pipeline[0][0], "end": finish}
    )
    return builder


def build_graph(
    variant: Variant = "billp",
    *,
    checkpointer: Any = None,
    replace: Mapping[str, Node] | None = None,
    insert_after: Mapping[str, tuple[str, Node]] | None = None,
) -> CompiledStateGraph:
    """Return a compiled graph; pass a checkpointer only for in-process runs (not for Studio)."""
    builder = make_builder(variant, replace=replace, insert_after=insert_after)
    return builder.compile(checkpointer=checkpointer, name=variant)


builder = make_builder("billp")
"""The module-level BiLLP builder, for reuse and for tools that want an uncompiled graph."""
