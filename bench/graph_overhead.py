"""Measure what BiLLP's graph costs per env step apart from the LLM: nodes, memories, LangGraph.

python -m bench.graph_overhead [--quick] [--out PATH]

The `scripted` test double answers at once, so wall time per step is everything but model
latency: prompt rendering, structured-output plumbing, embeddings and memory lookups and writes,
the simulated user, and LangGraph itself. A trivial graph with the same node hops gives
LangGraph's own floor, so a reader can tell our cost from the framework's. MiniLM runs are
reported apart: there a real embedding model runs on every new state. The environment builds
once into $BILLP_CACHE before timing starts; memories live in a throwaway folder.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import os
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LANGSMITH_TRACING", "false")

import torch

from bench.common import main as cli
from eval.runner import recursion_limit
from graph import Context, build_graph
from nodes.resources import embeddings_of, get_resources

HEADLINE = ("shortlist", "hashing")
ROUNDS = 3  # timed rounds per hashing configuration and for the floor; the median is reported
CONFIGS = (
    ("shortlist", "hashing"),
    ("free", "hashing"),
    ("shortlist", "minilm"),
    ("free", "minilm"),
)
# Where the profile looks for its top functions: our packages, and the LLM call they wrap.
PROFILE_SCOPE = ("/nodes/", "/memory/", "/simulator/", "/graph/", "chat_models.py")
# Self time summed per area: the first fragment found in a function's file (or builtin) wins.
AREAS = (
    ("langgraph", "/langgraph/"),
    ("langchain", "/langchain_core/"),
    ("langchain", "/langsmith/"),
    ("pydantic", "pydantic"),
    ("asyncio", "/asyncio/"),
    ("asyncio", "selectors.py"),
    ("asyncio", "epoll"),
    ("numpy/faiss/torch", "numpy"),
    ("numpy/faiss/torch", "faiss"),
    ("numpy/faiss/torch", "torch"),
    ("ours", "/nodes/"),
    ("ours", "/memory/"),
    ("ours", "/simulator/"),
    ("ours", "/graph/"),
)


def _context(grounding: str, embeddings: str, memory_dir: Path) -> Context:
    return Context(
        dataset="synthetic",
        llm="scripted",
        embeddings=embeddings,
        grounding=grounding,  # type: ignore[arg-type]
        critic="llm",
        memory_dir=str(memory_dir),
        temperature=0.0,
        learn=True,
    )


async def _episodes(graph: Any, ctx: Context, users: list[int], min_steps: int = 0) -> dict:
    """Play one episode per user in turn (more users until `min_steps`); return totals."""
    config = {"recursion_limit": recursion_limit(ctx.max_steps)}
    steps = calls = episodes = 0
    wall, cpu = time.perf_counter(), time.process_time()
    while episodes < len(users) or steps < min_steps:
        user = users[episodes % len(users)] if episodes < len(users) else _more(ctx, episodes)
        state = await graph.ainvoke({"user_id": int(user)}, config, context=ctx)
        steps += len(state["recommended"])
        calls += sum(int(u.get("calls", 0)) for u in (state.get("usage") or {}).values())
        episodes += 1
    return {
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
        "steps": steps,
        "calls": calls,
        "episodes": episodes,
    }


def _more(ctx: Context, index: int) -> int:
    return _users(ctx, index + 1)[index]


def _users(ctx: Context, count: int, offset: int = 0) -> list[int]:
    users = get_resources(ctx).bundle.test_users
    return [users[(offset + i) % len(users)] for i in range(count)]


def _warm(grounding: str, embeddings: str, root: Path, name: str, n: int) -> tuple[Any, Context]:
    """Build the graph and resources and play `n` episodes on users the timing never sees."""
    ctx = _context(grounding, embeddings, root / name)
    graph = build_graph("billp")
    asyncio.run(_episodes(graph, ctx, _users(ctx, n, offset=-n)))
    embeddings_of(ctx.embeddings).clear()  # timed episodes embed their states cold
    return graph, ctx


def _ms(seconds: float, steps: int) -> float:
    return round(1000 * seconds / max(steps, 1), 3)


def measure(
    grounding: str,
    embeddings: str,
    episodes: int,
    root: Path,
    min_steps: int = 0,
    warm: int = 2,
    rounds: int = 1,
) -> dict[str, Any]:
    """Time `rounds` rounds of `episodes` episodes (more if short of `min_steps`); return the
    median round's ms/step.

    Each round starts from a fresh memory folder warmed by `warm` episodes, so the rounds are
    samples of one workload, and the median is taken because this machine is shared: one round
    caught by a neighbour's burst would otherwise decide the number.
    """
    outs = []
    for r in range(rounds):
        graph, ctx = _warm(grounding, embeddings, root, f"{grounding}-{embeddings}-{r}", warm)
        users = _users(ctx, episodes, offset=r * episodes)
        outs.append(asyncio.run(_episodes(graph, ctx, users, min_steps)))
    out = sorted(outs, key=lambda o: o["seconds"] / max(o["steps"], 1))[len(outs) // 2]
    steps = max(out["steps"], 1)
    return {
        "ms_per_step": _ms(out["seconds"], steps),
        "cpu_ms_per_step": _ms(out["cpu_seconds"], steps),
        "steps": out["steps"],
        "episodes": out["episodes"],
        "llm_calls_per_step": round(out["calls"] / steps, 3),
        "seconds": round(out["seconds"], 3),
        "rounds_ms_per_step": [_ms(o["seconds"], o["steps"]) for o in outs],
    }


def _trivial_nodes() -> dict[str, Any]:
    """Nodes doing nothing but the state updates BiLLP's nodes make, episode length fixed."""

    async def start(state: dict, runtime: Any) -> dict:
        return {"recommended": [], "rewards": [], "pending": {}, "done": False, "value": 0.0}

    async def planner(state: dict, runtime: Any) -> dict:
        return {"thought": "t", "usage": {"planner": {"calls": 1}}, "fallbacks": {"planner": 0}}

    async def actor(state: dict, runtime: Any) -> dict:
        return {"pending": {"item": 0}, "usage": {"actor": {"calls": 1}}, "fallbacks": {}}

    async def user(state: dict, runtime: Any) -> dict:
        recommended = [*state["recommended"], 0]
        done = len(recommended) >= runtime.context.max_steps
        return {"recommended": recommended, "rewards": [*state["rewards"], 1.0], "done": done}

    async def critic(state: dict, runtime: Any) -> dict:
        step = {**state["pending"], "value": 0.0}
        return {"steps": [step], "pending": {}, "value": 0.0, "usage": {"critic": {"calls": 1}}}

    async def reflector(state: dict, runtime: Any) -> dict:
        return {"reflection": "r"}

    return {
        "start": start,
        "planner": planner,
        "actor": actor,
        "user": user,
        "critic": critic,
        "reflector": reflector,
    }


def langgraph_floor(steps: int, episodes: int, rounds: int = 1) -> dict[str, Any]:
    """Time the same graph (4 nodes a step, same state schema) with trivial nodes (median of
    `rounds`, like `measure`)."""
    graph = build_graph("billp", replace=_trivial_nodes())
    ctx = Context(max_steps=steps)
    config = {"recursion_limit": recursion_limit(steps)}

    async def play(n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            await graph.ainvoke({"user_id": 0}, config, context=ctx)
        return time.perf_counter() - started

    asyncio.run(play(2))
    per_round = sorted(_ms(asyncio.run(play(episodes)), steps * episodes) for _ in range(rounds))
    return {
        "ms_per_step": per_round[len(per_round) // 2],
        "steps": steps * episodes,
        "nodes_per_step": 4,
        "rounds_ms_per_step": per_round,
    }


def _area(path: str, name: str) -> str:
    where = name if path == "~" else path  # a builtin's name says e.g. faiss, numpy or epoll
    return next((area for area, part in AREAS if part in where), "other")


def profile_breakdown(grounding: str, embeddings: str, episodes: int, root: Path) -> dict:
    """Profile `episodes` cold episodes: self-time share per area, and our top functions."""
    graph, ctx = _warm(grounding, embeddings, root, f"profile-{grounding}-{embeddings}", 1)
    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(_episodes(graph, ctx, _users(ctx, episodes)))
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO()).stats  # type: ignore[attr-defined]
    total = max(sum(row[2] for row in stats.values()), 1e-9)
    areas: dict[str, float] = {}
    rows = []
    for (path, line, name), (_cc, calls, self_s, cum, _) in stats.items():
        area = _area(path, name)
        areas[area] = areas.get(area, 0.0) + self_s
        if any(part in path for part in PROFILE_SCOPE) and name not in {"<module>", "wrapper"}:
            where = "/".join(Path(path).parts[-2:])
            rows.append({"function": f"{where}:{line}({name})", "calls": calls, "cum": cum})
    rows.sort(key=lambda r: -r["cum"])
    ranked = sorted(areas.items(), key=lambda kv: -kv[1])
    return {
        "config": f"{grounding}+{embeddings}",
        "episodes": episodes,
        "self_time_share": {area: round(s / total, 3) for area, s in ranked},
        "top_cumulative": [
            {"function": r["function"], "calls": r["calls"], "share": round(r["cum"] / total, 3)}
            for r in rows[:8]
        ],
        "note": "cProfile times a coroutine per resumption: cumulative shares are indicative",
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Return ms per env step of every configuration, LangGraph's floor and a profile."""
    torch.set_num_threads(1)
    episodes, min_steps = (5, 100) if quick else (20, 400)
    configs = CONFIGS[:3] if quick else CONFIGS
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="billp-overhead-") as tmp:
        root = Path(tmp)
        for grounding, embeddings in configs:
            if embeddings == "minilm":  # a model forward per new state: fewer, longer steps
                args = (2 if quick else 5, root, 0, 1, 1)
            else:
                args = (episodes, root, min_steps, 2, ROUNDS)
            results[f"{grounding}+{embeddings}"] = measure(grounding, embeddings, *args)
        headline = results["+".join(HEADLINE)]
        mean_len = max(1, round(headline["steps"] / headline["episodes"]))
        floor = langgraph_floor(mean_len, episodes, ROUNDS)
        profile = profile_breakdown(*HEADLINE, 3 if quick else 5, root)
    return {
        "graph_overhead_ms_per_step": headline["ms_per_step"],
        "graph_overhead_above_floor_ms": round(headline["ms_per_step"] - floor["ms_per_step"], 3),
        "graph_overhead": {
            "llm": "scripted",
            "dataset": "synthetic",
            "variant": "billp",
            "critic": "llm",
            "learn": True,
            "checkpointer": None,
            "torch_threads": torch.get_num_threads(),
            "headline": "+".join(HEADLINE),
            "configs": results,
            "langgraph_floor": floor,
            "profile": profile,
        },
    }


if __name__ == "__main__":
    cli(run, __doc__)
