"""Wire the agents into LangGraph graphs: BiLLP and the baselines that share its nodes.

Each variant is a start node, a per-step pipeline that loops while the user stays, and an
optional reflector at the end:

    billp          start(similar reflections) -> planner -> actor(+memory hint) -> user -> critic
                   -> ... -> reflector
    billp-nomacro  start -> planner -> actor(+memory hint) -> user -> critic -> ...
                   (ablation: no reflections)
    billp-nomicro  start(similar reflections) -> planner -> actor -> user -> ... -> reflector
                   (ablation: no actor/critic memories)
    reflexion      start(2 random reflections) -> planner -> actor -> user -> ... -> reflector
    react          start -> planner -> actor -> user -> ...
    actonly        start -> actor -> user -> ...

Extend without editing the package: `replace={"critic": my_critic}` swaps a node, and
`insert_after={"actor": ("explainer", explain)}` adds one into the step pipeline. A node is any
function `StateGraph.add_node` accepts (sync or async; `(state)`, `(state, config)`,
`(state, runtime)`, ...) returning only the fields it changes; LangGraph injects what it asks for.

Our nodes are async (they await the LLM and embeddings concurrently across episodes), so the
compiled graph is a `BiLLPGraph`: LangGraph's own graph whose sync entry points (`invoke`,
`stream`, `batch`) drive the async ones on a private event loop (`graph.bridge`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from graph.bridge import drive, run
from nodes.actor import make_actor
from nodes.context import Context
from nodes.critic import critic
from nodes.episode import make_start, make_user
from nodes.planner import planner
from nodes.reflector import reflector
from nodes.state import InputState, State

Variant = Literal["billp", "billp-nomacro", "billp-nomicro", "reflexion", "react", "actonly"]
VARIANTS: tuple[Variant, ...] = (
    "billp", "billp-nomacro", "billp-nomicro", "reflexion", "react", "actonly",
)  # fmt: skip
LEARNING_VARIANTS: tuple[Variant, ...] = ("billp", "billp-nomacro", "billp-nomicro", "reflexion")
"""Variants that write memories (and so have a train phase in experiments)."""
Node = Callable[..., Any]


def variant_nodes(variant: Variant) -> tuple[Node, list[tuple[str, Node]], Node | None]:
    """Return (start, step pipeline, reflector or None) of a variant."""
    micro = [
        ("planner", planner),
        ("actor", make_actor(use_memory=True)),
        ("user", make_user(closes_step=False)),
        ("critic", critic),
    ]
    plain = [("planner", planner), ("actor", make_actor(False)), ("user", make_user(True))]
    if variant == "billp":
        return make_start("similar", variant), micro, reflector
    if variant == "billp-nomacro":
        return make_start("none", variant), micro, None
    if variant == "billp-nomicro":
        return make_start("similar", variant), plain, reflector
    if variant == "reflexion":
        return make_start("random", variant), plain, reflector
    if variant == "react":
        return make_start("none", variant), plain, None
    if variant == "actonly":
        steps = [("actor", make_actor(False)), ("user", make_user(True))]
        return make_start("none", variant), steps, None
    raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")


def route_after_step(state: dict[str, Any]) -> Literal["continue", "end"]:
    """Loop while the user stays; end when they left or the step limit was reached."""
    if "done" not in state:
        raise RuntimeError("route_after_step: state has no 'done'; did the user node run?")
    return "end" if state["done"] else "continue"


class _Router(Runnable[dict[str, Any], str]):
    """`route_after_step` as a Runnable that runs inline on both paths.

    A plain function router would run in a worker thread under `ainvoke` and an async one opens a
    traced callback run: per step, that is LangGraph's cost of a router, not our logic's.
    """

    name = "route_after_step"

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> str:
        return route_after_step(input)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> str:
        return route_after_step(input)


class BiLLPGraph(CompiledStateGraph):
    """A compiled graph whose sync `invoke` and `stream` (hence `batch`) run the async ones.

    LangGraph's sync path refuses async nodes; driving the async path instead serves every node
    signature from both sides, and runs `invoke` inside a running event loop (a notebook) too.
    A checkpointer must then support async calls (`InMemorySaver`, `AsyncSqliteSaver`).
    """

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        # Whole: one hand-over between threads per run, where `stream` makes one per update.
        return run(self.ainvoke(input, config, **kwargs))

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator:
        return drive(self.astream(input, config, **kwargs))


def make_builder(
    variant: Variant = "billp",
    *,
    replace: Mapping[str, Node] | None = None,
    insert_after: Mapping[str, tuple[str, Node]] | None = None,
) -> StateGraph:
    """Return the uncompiled graph of a variant, with nodes replaced or inserted.

    `build_graph` compiles it; a graph compiled by hand needs `sync_capable` for `invoke`.
    """
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
    builder.add_node("start", replace.get("start", start))
    for name, fn in pipeline:
        builder.add_node(name, fn)
    builder.add_edge(START, "start")
    builder.add_edge("start", pipeline[0][0])
    for (a, _), (b, _) in itertools.pairwise(pipeline):
        builder.add_edge(a, b)
    finish = END
    if end_node is not None:
        builder.add_node("reflector", replace.get("reflector", end_node))
        builder.add_edge("reflector", END)
        finish = "reflector"
    builder.add_conditional_edges(
        pipeline[-1][0], _Router(), {"continue": pipeline[0][0], "end": finish}
    )
    return builder


def build_graph(
    variant: Variant = "billp",
    *,
    checkpointer: Any = None,
    replace: Mapping[str, Node] | None = None,
    insert_after: Mapping[str, tuple[str, Node]] | None = None,
) -> BiLLPGraph:
    """Return a compiled graph; pass a checkpointer only for in-process runs (not for Studio)."""
    builder = make_builder(variant, replace=replace, insert_after=insert_after)
    return sync_capable(builder.compile(checkpointer=checkpointer, name=variant))


def sync_capable(graph: CompiledStateGraph) -> BiLLPGraph:
    """Give a graph compiled from `make_builder` our sync entry points, in place.

    `StateGraph.compile` hard-codes its result's class, and rebuilding one through its constructor
    drops what compile set after it; `BiLLPGraph` only adds methods, so the class can change.
    """
    graph.__class__ = BiLLPGraph
    return graph


builder = make_builder("billp")
"""The module-level BiLLP builder, for reuse and for tools that want an uncompiled graph."""
